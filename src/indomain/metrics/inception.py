"""The FID Inception-v3 network (vendored) and :func:`inception_extractor`, which loads its weights from a local file.

Why vendored, not torch-fidelity: its package ``__init__`` imports torchvision, and merely having it installed makes
``import torchmetrics`` fail where torchvision is missing (our CPU torch has no working torchvision). So
:class:`FIDInceptionV3` is defined here, with torch-fidelity's parameter names, so that its weights file loads
strictly; with shared random weights its outputs were checked bit-identical to torch-fidelity 0.4.0 and torchmetrics
1.9 (both resize modes).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from .result import MissingWeightsError

__all__ = [
    "INCEPTION_WEIGHTS_FILENAME",
    "INCEPTION_WEIGHTS_URL",
    "FIDInceptionV3",
    "InceptionResize",
    "inception_extractor",
]

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# The hub naming convention puts the first 8 hex digits of the file's sha256 in its name.
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_INPUT_SIZE = 299


class _BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's average pool does not count the zero padding (the patch that makes FID match TF).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = _BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = _BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = _BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        # The TF graph's last block (Mixed_7c) max-pools where the paper average-pools; FID keeps that quirk.
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = _BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


def _resize_tf1_bilinear(x: Tensor, size: int) -> Tensor:
    """Bilinear resize like TF1 ``resize_bilinear(align_corners=False)`` (no half-pixel offset).

    This is the resize of the original TF FID code, reproduced as torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x`` (its exact "slow" path: float32 grid, x then y).
    """

    def grid(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, pos - lo.float()

    y_lo, y_hi, dy = grid(x.shape[2])
    x_lo, x_hi, dx = grid(x.shape[3])
    top, bottom = x[:, :, y_lo, :], x[:, :, y_hi, :]
    dx = dx.view(1, 1, 1, size)
    row0 = top[..., x_lo] + (top[..., x_hi] - top[..., x_lo]) * dx
    row1 = bottom[..., x_lo] + (bottom[..., x_hi] - bottom[..., x_lo]) * dx
    return row0 + (row1 - row0) * dy.view(1, 1, size, 1)


InceptionResize = Literal["antialias", "legacy-tf"]


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (TF graph of 2015-12-05) returning pool3 features, ``(N, 2048)``.

    Same layers and parameter names as torch-fidelity's ``FeatureExtractorInceptionV3`` and pytorch-fid's
    ``FIDInceptionA..E``, so their converted weights load with ``strict=True``; weights are never downloaded, use
    :func:`inception_extractor`. Input: float ``(N, 3, H, W)`` in ``[0, 1]``. It is quantized to 0..255 (rounded, as
    the uint8 images the network was defined on), resized to 299 (a no-op at 299) and scaled by ``(x - 128) / 128``.

    ``resize``: ``"antialias"`` = bilinear with antialiasing, torchmetrics' default since 1.8 (``antialias=True``);
    ``"legacy-tf"`` = TF1 bilinear, as the original TF code, torch-fidelity and torchmetrics ``antialias=False``.
    Feeding images already at 299 (the default evaluation resolution, reached with PIL bicubic like clean-fid) makes
    both identical.
    """

    input_resolution = INCEPTION_INPUT_SIZE
    num_features = 2048

    def __init__(self, resize: InceptionResize = "antialias") -> None:
        super().__init__()
        if resize not in ("antialias", "legacy-tf"):
            raise ValueError(f"resize must be 'antialias' or 'legacy-tf', got {resize!r}")
        self.resize = resize
        self.display_name = "inception-v3-compat (FID pool3, 2048-d)"
        self.identity: str | None = None  # set by inception_extractor from the weights file's hash
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)  # unused for FID; kept so the weights file loads strictly
        self.eval()

    @property
    def resize_mode(self) -> str:
        if self.resize == "antialias":
            return "bilinear antialias=True to 299 (torchmetrics>=1.8 default)"
        return "TF1 bilinear to 299 (legacy TF FID / torch-fidelity / torchmetrics antialias=False)"

    def train(self, mode: bool = True) -> FIDInceptionV3:
        return super().train(False)  # BatchNorm must keep its running statistics

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(x.shape)}")
        x = (x.float() * 255).round().clamp(0, 255) if x.dtype != torch.uint8 else x.float()
        size = INCEPTION_INPUT_SIZE
        if x.shape[-2:] != (size, size):
            if self.resize == "antialias":
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            else:
                x = _resize_tf1_bilinear(x, size)
        x = (x - 128) / 128
        layers: tuple[nn.Module, ...] = (
            self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.MaxPool_1,
            self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.MaxPool_2,
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
            self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
            self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        )  # fmt: skip
        for layer in layers:
            x = layer(x)
        return torch.flatten(self.AvgPool(x), 1)


def _missing_inception_message(path: str | os.PathLike | None) -> str:
    where = f"Not found: {str(path)!r}. " if path is not None else "No weights file was given. "
    return (
        "FID/KID with Inception features need the FID Inception-v3 weights file "
        f"{INCEPTION_WEIGHTS_FILENAME!r} (the TF Inception graph of 2015-12-05 converted to PyTorch by torch-fidelity, "
        f"{INCEPTION_WEIGHTS_URL}). "
        f"{where}Nothing is downloaded at run time: fetch the file on a machine with internet access and pass it "
        "with --inception-weights PATH (Python: inception_extractor(PATH)), or use a custom feature extractor."
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inception_extractor(
    weights_path: str | os.PathLike | None,
    *,
    resize: InceptionResize = "antialias",
    device: torch.device | str | None = None,
) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` from a LOCAL weights file (``.pth`` state dict or ``.safetensors``).

    Raises :class:`MissingWeightsError` (a ``FileNotFoundError``) saying which file is needed, where it comes from and
    how to pass it (``--inception-weights PATH``). A file whose sha256 does not start with ``6726825d`` still loads
    (if its layers fit) but warns, because its FID is not comparable with published numbers.
    """
    if weights_path is None or not Path(weights_path).expanduser().is_file():
        raise MissingWeightsError(_missing_inception_message(weights_path))
    path = Path(weights_path).expanduser()
    sha = _file_sha256(path)
    if not sha.startswith(INCEPTION_SHA256_PREFIX):
        warnings.warn(
            f"{path} (sha256 {sha[:12]}...) is not the standard FID Inception file "
            f"(sha256 {INCEPTION_SHA256_PREFIX}...): its FID is not comparable with published values",
            UserWarning,
            stacklevel=2,
        )
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        # weights_only: a plain state dict needs no pickle code execution.
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = FIDInceptionV3(resize=resize)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} is not an FID Inception-v3 state dict: {err}") from err
    model.identity = f"fid-inception-v3:pool3:sha256={sha[:16]}:resize={resize}"
    model.requires_grad_(False)
    if device is not None:
        model.to(device)
    return model
