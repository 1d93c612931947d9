"""Scores for in-domain image generation: FID, KID and CLIP score, all through torchmetrics.

Protocol (the same for every metric, and recorded in every :class:`MetricResult`)
---------------------------------------------------------------------------------
* **Image convention.** Images enter as float tensors in ``[0, 1]`` of shape ``(N, 3, H, W)`` (uint8 tensors in
  ``[0, 255]`` are accepted and divided by 255), as PIL images, or as a folder. Float tensors outside ``[0, 1]``
  (for example diffusers' ``[-1, 1]``) are refused rather than silently clipped.
* **Folders.** Every ``.png .jpg .jpeg .webp .bmp`` file below the folder (recursive, hidden paths skipped), in
  sorted order. Each file becomes RGB; transparency is composited on **white** (emoji and icons are RGBA).
* **Images of different sizes** (the rule, see :func:`preprocess_image`): a non-square image is center-cropped to
  its largest square, then every image whose size differs from the evaluation resolution ``R`` is resized to
  ``R x R`` with PIL **bicubic**. Real and generated images follow the same rule, so both sets reach the feature
  extractor at the same size. Tensors already at ``R x R`` pass through untouched.
* **Feature space.** FID and KID are computed on the features of a pluggable extractor: any ``nn.Module`` that maps
  a float ``(N, 3, R, R)`` batch in ``[0, 1]`` to ``(N, D)`` features (the emoji world uses its own classifier), or
  :class:`FIDInceptionV3`, the standard FID network (pool3, 2048-d), loaded from a weights file the user supplies.
  The statistic itself (Fréchet distance, polynomial-kernel MMD) is torchmetrics' ``FrechetInceptionDistance`` /
  ``KernelInceptionDistance`` fed with those features.
* **Real-image statistics are cached** per (folder content, extractor identity, resolution) as safetensors; see
  :func:`real_image_stats`.

FID values are only comparable when library, extractor, resize mode, resolution and sample counts all match
(torchmetrics >= 1.8 resizes with antialiasing, torch-fidelity/TF FID without): that is why each result records
them.

Why no torch-fidelity: its package ``__init__`` imports torchvision, and merely having it installed makes
``import torchmetrics`` fail where torchvision is missing (our CPU torch has no working torchvision). The FID Inception
network is therefore defined here (:class:`FIDInceptionV3`): same parameter names as torch-fidelity's, so its weights
file loads strictly; with shared random weights its outputs were checked bit-identical to torch-fidelity 0.4.0 and
torchmetrics 1.9 (both resize modes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

__all__ = [
    "IMAGE_EXTENSIONS",
    "INCEPTION_WEIGHTS_FILENAME",
    "INCEPTION_WEIGHTS_URL",
    "FIDInceptionV3",
    "FeatureStats",
    "ImageFolderError",
    "ImageSource",
    "MetricResult",
    "MissingWeightsError",
    "clip_score",
    "compute_fid",
    "compute_kid",
    "default_cache_dir",
    "describe_extractor",
    "extract_features",
    "frechet_distance",
    "image_metrics",
    "inception_extractor",
    "iter_image_batches",
    "list_images",
    "load_image",
    "preprocess_image",
    "real_image_stats",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# The hub naming convention puts the first 8 hex digits of the file's sha256 in its name.
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_INPUT_SIZE = 299

STATS_CACHE_ENV = "INDOMAIN_STATS_CACHE"
# Part of the cache key: bump it whenever the loading/preprocessing rule changes, so stale statistics are not reused.
PREPROCESS_VERSION = "1"
PREPROCESS_RULE = (
    "RGB (alpha composited on white); non-square images center-cropped to a square; "
    "PIL bicubic resize to {r}x{r} when the size differs; float32 in [0, 1]"
)

ImageSource = str | os.PathLike | Tensor | Sequence[Image.Image] | Iterable[Tensor]
"""A folder, an ``(N, 3, H, W)`` tensor, a sequence of PIL images, or an iterable of tensor batches."""


class MissingWeightsError(FileNotFoundError):
    """A model file or directory that cannot be downloaded here is missing; the message says how to supply it."""


class ImageFolderError(ValueError):
    """An image folder is missing, empty, or holds an unreadable image; the message names it."""


# ----------------------------------------------------------------------------------------------------------------
# Loading and preprocessing
# ----------------------------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted, hidden files/folders skipped).

    Raises :class:`ImageFolderError` naming the folder when it does not exist, cannot be read, or has no image.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"image folder {str(root)!r} does not exist or is not a directory")
    try:
        files = [
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.is_file()
        ]
    except OSError as err:  # e.g. permission denied on a subfolder
        raise ImageFolderError(f"cannot read image folder {str(root)!r}: {err}") from err
    if not files:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ImageFolderError(f"image folder {str(root)!r} holds no image ({exts}, searched recursively)")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open one image as RGB; transparent pixels are composited on white (emoji/icons come as RGBA)."""
    try:
        with Image.open(path) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            if has_alpha:
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageFolderError(f"cannot read image {str(path)!r}: {err}") from err


def preprocess_image(image: Image.Image, resolution: int) -> Tensor:
    """Apply the size rule: center-crop to a square, bicubic-resize to ``resolution``.

    Returns a float (3, R, R) tensor in [0, 1].
    """
    image = image.convert("RGB")
    w, h = image.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) float [0, 1] tensor -> PIL RGB, for resizing tensors with the same PIL rule as files."""
    array = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, mode="RGB")


def _prepare_tensor_batch(batch: Tensor, resolution: int) -> Tensor:
    """Validate a tensor batch (range, channels) and bring it to ``resolution`` with the documented rule."""
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)
    if batch.ndim != 4 or batch.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        batch = batch.float() / 255.0
    elif not torch.is_floating_point(batch):
        raise ValueError(f"expected float images in [0, 1] or uint8 images, got dtype {batch.dtype}")
    else:
        batch = batch.float()
        lo, hi = float(batch.min()), float(batch.max())
        # A small tolerance for decoder round-off; [-1, 1] images are a caller bug, not something to clip away.
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"expected float images in [0, 1], got values in [{lo:.3f}, {hi:.3f}]")
        batch = batch.clamp(0, 1)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    elif batch.shape[1] == 4:  # RGBA tensor: composite on white like files
        rgb, alpha = batch[:, :3], batch[:, 3:]
        batch = rgb * alpha + (1 - alpha)
    if batch.shape[-2:] == (resolution, resolution):
        return batch.contiguous()
    return torch.stack([preprocess_image(_to_pil(img), resolution) for img in batch])


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _iter_files(files: Sequence[Path], resolution: int, batch_size: int) -> Iterator[Tensor]:
    for paths in _chunks(files, batch_size):
        yield torch.stack([preprocess_image(load_image(p), resolution) for p in paths])


def iter_image_batches(source: ImageSource, resolution: int, batch_size: int = 50) -> Iterator[Tensor]:
    """Yield float ``(B, 3, resolution, resolution)`` batches in [0, 1] from any :data:`ImageSource`.

    Folders are read lazily, so a large folder never sits in memory at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, (str, os.PathLike)):
        yield from _iter_files(list_images(source), resolution, batch_size)
        return
    if isinstance(source, Tensor):
        batch = source.unsqueeze(0) if source.ndim == 3 else source
        for start in range(0, batch.shape[0], batch_size):
            yield _prepare_tensor_batch(batch[start : start + batch_size], resolution)
        return
    pending: list[Image.Image] = []
    for item in source:
        if isinstance(item, Image.Image):
            pending.append(item)
            if len(pending) == batch_size:
                yield torch.stack([preprocess_image(img, resolution) for img in pending])
                pending = []
        elif isinstance(item, Tensor):
            yield _prepare_tensor_batch(item, resolution)
        else:
            raise TypeError(f"unsupported image item of type {type(item).__name__}; use PIL images or tensors")
    if pending:
        yield torch.stack([preprocess_image(img, resolution) for img in pending])


def _count_images(source: ImageSource | FeatureStats) -> int | None:
    """Number of images when it is known without decoding them (used to fail fast on bad KID/CLIP arguments)."""
    if isinstance(source, FeatureStats):
        return source.n
    if isinstance(source, (str, os.PathLike)):
        return len(list_images(source))
    if isinstance(source, Tensor):
        return 1 if source.ndim == 3 else int(source.shape[0])
    if isinstance(source, Sequence) and all(isinstance(x, Image.Image) for x in source):
        return len(source)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractorInfo:
    """How a feature extractor is named in results and in cache keys."""

    name: str
    identity: str
    resize_mode: str


def _module_device(module: nn.Module) -> torch.device:
    first: Tensor | None = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _state_dict_digest(module: nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of the weights: retraining an extractor changes its identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe_extractor(extractor: nn.Module) -> ExtractorInfo:
    """Name, cache identity and internal resize mode of an extractor.

    A module may set ``display_name``, ``identity`` and ``resize_mode`` attributes; otherwise the class name, the class
    path plus a hash of the weights, and ``"none"`` (custom extractors get images at the evaluation resolution as is).
    """
    cls = type(extractor)
    name = str(getattr(extractor, "display_name", cls.__name__))
    identity = getattr(extractor, "identity", None)
    if identity is None:
        identity = f"{cls.__module__}.{cls.__qualname__}:sha256={_state_dict_digest(extractor)[:16]}"
    return ExtractorInfo(name=name, identity=str(identity), resize_mode=str(getattr(extractor, "resize_mode", "none")))


@torch.no_grad()  # not inference_mode: callers may still use the features in autograd code
def extract_features(
    extractor: nn.Module, batches: Iterable[Tensor], device: torch.device | str | None = None
) -> Tensor:
    """Run ``extractor`` over image batches and return ``(N, D)`` float32 features on the CPU.

    The extractor is used in eval mode (its previous mode is restored) on ``device``, by default the device of its
    weights. Use this with any classifier's penultimate layer to get a Fréchet distance in its feature space.
    """
    target = torch.device(device) if device is not None else _module_device(extractor)
    was_training = extractor.training
    extractor.eval()
    chunks: list[Tensor] = []
    try:
        for batch in batches:
            feats = extractor(batch.to(target))
            if feats.ndim == 1 and batch.shape[0] == 1:
                feats = feats.unsqueeze(0)
            if feats.ndim != 2 or feats.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"feature extractor must map {batch.shape[0]} images to ({batch.shape[0]}, D) features, "
                    f"got shape {tuple(feats.shape)}"
                )
            chunks.append(feats.detach().float().cpu())
    finally:
        extractor.train(was_training)
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks)


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


# ----------------------------------------------------------------------------------------------------------------
# Statistics, Fréchet distance and the real-image cache
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    """Mean, covariance (unbiased, N-1) and the features themselves (needed by KID) of one image set."""

    mu: Tensor  # (D,) float64
    sigma: Tensor  # (D, D) float64
    features: Tensor  # (N, D) float32
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def from_features(cls, features: Tensor, metadata: Mapping[str, str] | None = None) -> FeatureStats:
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need (N >= 2, D) features for statistics, got {tuple(features.shape)}")
        feats64 = features.double()
        return cls(
            mu=feats64.mean(0),
            sigma=torch.cov(feats64.T, correction=1),
            features=features.float().contiguous(),
            metadata=dict(metadata or {}),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (tmp file + rename) so a killed run never leaves a truncated cache entry."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tensors = {
            "mu": self.mu.contiguous(),
            "sigma": self.sigma.contiguous(),
            "n": torch.tensor(self.n, dtype=torch.int64),
            "features": self.features.contiguous(),
        }
        save_file(tensors, str(tmp), metadata={**self.metadata, "n": str(self.n)})
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
        return cls(mu=tensors["mu"], sigma=tensors["sigma"], features=tensors["features"], metadata=metadata)


def _as_float64(x: Tensor | np.ndarray) -> Tensor:
    return (x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))).detach().cpu().double()


def frechet_distance(
    mu1: Tensor | np.ndarray, sigma1: Tensor | np.ndarray, mu2: Tensor | np.ndarray, sigma2: Tensor | np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 (numpy or torch inputs).

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``. The trace term uses the
    symmetric form ``sqrt(eig(sqrt(s1) s2 sqrt(s1)))`` which stays real and stable for rank-deficient covariances
    (fewer samples than dimensions). Pure helper: use it on any feature space, e.g. a domain classifier's.
    """
    m1, m2, s1, s2 = (_as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    if m1.shape != m2.shape or m1.ndim != 1:
        raise ValueError(f"means must be 1-D of equal length, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    dim = m1.shape[0]
    if s1.shape != (dim, dim) or s2.shape != (dim, dim):
        raise ValueError(f"covariances must be ({dim}, {dim}), got {tuple(s1.shape)} and {tuple(s2.shape)}")
    evals1, evecs1 = torch.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (evecs1 * evals1.clamp_min(0).sqrt()) @ evecs1.T
    middle = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * tr_covmean
    return float(value)


def default_cache_dir() -> Path:
    """``$INDOMAIN_STATS_CACHE``, else ``$XDG_CACHE_HOME/indomain/stats``, else ``~/.cache/indomain/stats``."""
    if os.environ.get(STATS_CACHE_ENV):
        return Path(os.environ[STATS_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "indomain" / "stats"


def _stats_cache_key(root: Path, files: Sequence[Path], extractor_identity: str, resolution: int) -> str:
    """Content key: relative names + sizes + mtimes (cheap, no decoding), extractor identity, resolution, rule."""
    entries = []
    for path in files:
        stat = path.stat()
        entries.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
    payload = {
        "files": entries,
        "extractor": extractor_identity,
        "resolution": resolution,
        "preprocess": PREPROCESS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def real_image_stats(
    folder: str | os.PathLike,
    extractor: nn.Module,
    resolution: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> FeatureStats:
    """Feature statistics of a real-image folder, cached per (folder content, extractor, resolution).

    The cache file ``<cache_dir>/<folder name>-<key>.safetensors`` holds ``mu``, ``sigma``, ``n`` and ``features``;
    adding, removing or touching an image, changing the extractor's weights or the resolution changes the key. The
    returned ``metadata["cache"]`` is ``"hit"``, ``"miss"`` (computed and written) or ``"disabled"``.
    """
    resolution = _resolve_resolution(extractor, resolution)
    root = Path(folder).expanduser()
    files = list_images(root)
    info = describe_extractor(extractor)
    key = _stats_cache_key(root, files, info.identity, resolution)
    metadata = {
        "folder": str(root.resolve()),
        "extractor": info.identity,
        "resolution": str(resolution),
        "preprocess_version": PREPROCESS_VERSION,
        "key": key,
    }
    cache_file = None
    if use_cache:
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.resolve().name or "root")
        cache_file = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_file = cache_file / f"{safe_name}-{key[:24]}.safetensors"
        if cache_file.is_file():
            try:
                stats = FeatureStats.load(cache_file)
            except Exception as err:  # a corrupt entry is recomputed, not fatal
                warnings.warn(f"ignoring unreadable stats cache {cache_file}: {err}", UserWarning, stacklevel=2)
            else:
                if stats.metadata.get("key") == key:  # guards against a 24-hex-digit prefix collision
                    stats.metadata.update(cache="hit", cache_file=str(cache_file))
                    return stats
    features = extract_features(extractor, _iter_files(files, resolution, batch_size), device)
    stats = FeatureStats.from_features(features, metadata)
    if cache_file is not None:
        stats.save(cache_file)
        stats.metadata.update(cache="miss", cache_file=str(cache_file))
    else:
        stats.metadata["cache"] = "disabled"
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MetricResult:
    """One score with everything needed to compare it with another (serializes to JSON).

    ``resize_mode`` is the extractor's own internal resize (``"none"`` for custom extractors); ``preprocess`` the
    rule that brought every image to ``resolution``; ``params`` the metric's settings (KID subsets, cache status...).
    """

    metric: str
    value: float
    std: float | None
    library: str
    library_version: str
    extractor: str
    extractor_id: str
    feature_dim: int | None
    resize_mode: str
    preprocess: str
    resolution: int | None
    n_real: int | None
    n_generated: int
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# FID / KID
# ----------------------------------------------------------------------------------------------------------------


class _PrecomputedFeatures(nn.Module):
    """Identity "extractor": torchmetrics computes its statistic on features we extracted (and cached) ourselves."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics instead of probing with a dummy image

    def forward(self, features: Tensor) -> Tensor:
        return features


def _resolve_resolution(extractor: nn.Module, resolution: int | None) -> int:
    resolution = resolution if resolution is not None else getattr(extractor, "input_resolution", None)
    if resolution is None:
        raise ValueError("pass resolution=: the extractor does not declare an input_resolution")
    if int(resolution) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return int(resolution)


def check_kid_subset(subset_size: int, n_real: int | None, n_generated: int | None) -> None:
    if subset_size < 1:
        raise ValueError(f"KID subset_size must be >= 1, got {subset_size}")
    too_small = [(label, n) for label, n in (("real", n_real), ("generated", n_generated)) if n is not None]
    if any(n < subset_size for _, n in too_small):
        counts = ", ".join(f"{n} {label}" for label, n in too_small)
        raise ValueError(
            f"KID subset_size={subset_size} is larger than the number of images ({counts}); "
            f"use subset_size <= {min(n for _, n in too_small)}"
        )


def image_metrics(
    real: ImageSource | FeatureStats,
    generated: ImageSource,
    extractor: nn.Module,
    *,
    metrics: Sequence[Literal["fid", "kid"]] = ("fid", "kid"),
    resolution: int | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    kid_degree: int = 3,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> dict[str, MetricResult]:
    """FID and/or KID of ``generated`` against ``real`` in ``extractor``'s feature space (features extracted once).

    ``real``: a folder (statistics cached, see :func:`real_image_stats`), any other :data:`ImageSource` (not cached)
    or precomputed :class:`FeatureStats`. ``resolution`` defaults to the extractor's ``input_resolution`` (299 for
    Inception). FID: torchmetrics ``FrechetInceptionDistance``. KID: torchmetrics ``KernelInceptionDistance`` with a
    cubic polynomial kernel, mean and std over ``kid_subsets`` random subsets of ``kid_subset_size`` (seeded);
    ``kid_subset_size`` larger than either set is refused with a ``ValueError`` naming both numbers.
    """
    unknown = set(metrics) - {"fid", "kid"}
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of ('fid', 'kid'), got {tuple(metrics)}")
    resolution = _resolve_resolution(extractor, resolution)
    if "kid" in metrics:  # fail before the expensive extraction when counts are known
        check_kid_subset(kid_subset_size, _count_images(real), _count_images(generated))

    info = describe_extractor(extractor)
    if isinstance(real, FeatureStats):
        recorded = real.metadata.get("extractor")
        if recorded and recorded != info.identity:
            raise ValueError(f"real statistics were computed with {recorded!r}, not with {info.identity!r}")
        real_stats = real
    elif isinstance(real, (str, os.PathLike)):
        real_stats = real_image_stats(
            real, extractor, resolution, cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size, device=device
        )
    else:
        feats = extract_features(extractor, iter_image_batches(real, resolution, batch_size), device)
        real_stats = FeatureStats.from_features(feats, {"cache": "not-a-folder"})
    gen_feats = extract_features(extractor, iter_image_batches(generated, resolution, batch_size), device)
    if gen_feats.shape[1] != real_stats.features.shape[1]:
        raise ValueError(
            f"real features are {real_stats.features.shape[1]}-d but generated are {gen_feats.shape[1]}-d: "
            "were the real statistics computed with another extractor?"
        )

    dim = int(gen_feats.shape[1])
    common: dict[str, Any] = {
        "library": "torchmetrics",
        "library_version": torchmetrics.__version__,
        "extractor": info.name,
        "extractor_id": info.identity,
        "feature_dim": dim,
        "resize_mode": info.resize_mode,
        "preprocess": PREPROCESS_RULE.format(r=resolution),
        "resolution": resolution,
        "n_real": real_stats.n,
        "n_generated": int(gen_feats.shape[0]),
    }
    cache_params = {k: real_stats.metadata[k] for k in ("cache", "cache_file") if k in real_stats.metadata}
    results: dict[str, MetricResult] = {}
    if "fid" in metrics:
        if gen_feats.shape[0] < 2:
            raise ValueError("FID needs at least 2 generated images")
        # sync_on_compute=False: scores are computed by one process; never all-gather across a process group
        fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(dim), sync_on_compute=False)
        fid.update(real_stats.features.double(), real=True)
        fid.update(gen_feats.double(), real=False)
        results["fid"] = MetricResult(
            metric="fid", value=float(fid.compute()), std=None, params={"real_stats": cache_params}, **common
        )
    if "kid" in metrics:
        check_kid_subset(kid_subset_size, real_stats.n, int(gen_feats.shape[0]))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid = KernelInceptionDistance(
                feature=_PrecomputedFeatures(dim), subsets=kid_subsets, subset_size=kid_subset_size, degree=kid_degree,
                sync_on_compute=False,
            )
        kid.update(real_stats.features.double(), real=True)
        kid.update(gen_feats.double(), real=False)
        with torch.random.fork_rng(devices=[]):  # seeded subsets without disturbing the caller's RNG
            torch.manual_seed(seed)
            kid_mean, kid_std = kid.compute()
        params = {
            "subsets": kid_subsets,
            "subset_size": kid_subset_size,
            "degree": kid_degree,
            "gamma": f"1/{dim}",
            "coef": 1.0,
            "seed": seed,
            "real_stats": cache_params,
        }
        results["kid"] = MetricResult(
            metric="kid", value=float(kid_mean), std=float(kid_std), params=params, **common
        )
    return results


def compute_fid(
    real: ImageSource | FeatureStats,
    generated: ImageSource,
    extractor: nn.Module,
    *,
    resolution: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> MetricResult:
    """FID (lower is better) in ``extractor``'s feature space; see :func:`image_metrics` for the protocol."""
    return image_metrics(
        real,
        generated,
        extractor,
        metrics=("fid",),
        resolution=resolution,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        device=device,
    )["fid"]


def compute_kid(
    real: ImageSource | FeatureStats,
    generated: ImageSource,
    extractor: nn.Module,
    *,
    subset_size: int = 1000,
    subsets: int = 100,
    degree: int = 3,
    seed: int = 0,
    resolution: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> MetricResult:
    """KID mean (``value``) and std over subsets (lower is better); see :func:`image_metrics`."""
    return image_metrics(
        real,
        generated,
        extractor,
        metrics=("kid",),
        resolution=resolution,
        kid_subset_size=subset_size,
        kid_subsets=subsets,
        kid_degree=degree,
        seed=seed,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        device=device,
    )["kid"]


# ----------------------------------------------------------------------------------------------------------------
# CLIP score
# ----------------------------------------------------------------------------------------------------------------


class _CLIPFeatures(nn.Module):
    """Adapter for torchmetrics 1.9 + transformers 5: ``get_*_features`` now return a ModelOutput whose
    ``pooler_output`` holds the projected embedding, while torchmetrics expects the tensor itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model
        self.config = model.config  # torchmetrics reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(output: Any) -> Tensor:
        return output if isinstance(output, Tensor) else output.pooler_output

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _clip_loader(model_dir: Path) -> Callable[[], tuple[nn.Module, Any]]:
    def load() -> tuple[nn.Module, Any]:
        from transformers import CLIPModel, CLIPProcessor

        # local_files_only: a directory path is never resolved against the hub.
        model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)
        return _CLIPFeatures(model.eval()), processor

    return load


def _crop_size(processor: Any) -> int:
    """Side of the square image the CLIP processor feeds its model (crop size, else resize size, else 224)."""
    for attr, key in (("crop_size", "height"), ("size", "shortest_edge")):
        value = getattr(processor.image_processor, attr, None)
        if isinstance(value, Mapping):
            value = value.get(key)
        elif value is not None and not isinstance(value, int):
            value = getattr(value, key, None)  # transformers 5 SizeDict
        if isinstance(value, int):
            return value
    return 224


def clip_score(
    images: ImageSource,
    texts: str | Sequence[str],
    clip_model_dir: str | os.PathLike | None,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> MetricResult:
    """CLIP score of images against texts with torchmetrics ``CLIPScore`` and a LOCAL CLIP model directory.

    Score = ``max(100 * mean_i cos(E_image_i, E_text_i), 0)`` (torchmetrics' definition: the clamp is on the mean).
    ``texts`` are taken as given (the scored text may differ from the generation prompt); one string is used for
    every image. Images follow the size rule at the processor's crop size (center crop + bicubic, like CLIP's own
    preprocessing), then go to torchmetrics as uint8 0..255, because the HF processor rescales by 1/255 itself.
    ``clip_model_dir`` is a ``save_pretrained`` / hub-snapshot folder (config, weights, tokenizer, processor files),
    e.g. of ``openai/clip-vit-large-patch14`` as in the paper; nothing is downloaded.
    """
    from torchmetrics.multimodal.clip_score import CLIPScore

    model_dir = Path(clip_model_dir).expanduser() if clip_model_dir is not None else None
    if model_dir is None or not (model_dir / "config.json").is_file():
        where = f"{str(model_dir)!r} is not such a directory (no config.json). " if model_dir else ""
        raise MissingWeightsError(
            "CLIP score needs a local CLIP model directory (transformers save_pretrained or hub snapshot with "
            "config.json, weights, tokenizer and preprocessor files, e.g. openai/clip-vit-large-patch14). "
            f"{where}Nothing is downloaded at run time: pass it with --clip-model DIR."
        )
    text_list = [texts] if isinstance(texts, str) else list(texts)
    n_images = _count_images(images)
    if isinstance(texts, str) and n_images is not None:
        text_list = text_list * n_images
    if n_images is not None and len(text_list) != n_images:
        raise ValueError(f"CLIP score needs one text per image: got {n_images} images and {len(text_list)} texts")

    # The callable form keeps torchmetrics away from the hub; it is typed for CLIPModel, we pass an adapter.
    metric = CLIPScore(model_name_or_path=cast(Any, _clip_loader(model_dir)), sync_on_compute=False)
    if device is not None:
        metric = metric.to(device)
    resolution = _crop_size(metric.processor)
    seen = 0
    with torch.no_grad():
        for batch in iter_image_batches(images, resolution, batch_size):
            if isinstance(texts, str):
                batch_texts = [texts] * batch.shape[0]
            else:
                batch_texts = text_list[seen : seen + batch.shape[0]]
            if len(batch_texts) != batch.shape[0]:
                raise ValueError(f"CLIP score needs one text per image: got more than {len(text_list)} images")
            pixels = (batch * 255).round().to(torch.uint8)
            if device is not None:
                pixels = pixels.to(device)
            metric.update(pixels, batch_texts)
            seen += batch.shape[0]
        if seen == 0:
            raise ValueError("CLIP score got no images")
        if not isinstance(texts, str) and seen != len(text_list):
            raise ValueError(f"CLIP score needs one text per image: got {seen} images and {len(text_list)} texts")
        value = float(metric.compute())
    config = metric.model.config
    return MetricResult(
        metric="clip_score",
        value=value,
        std=None,
        library="torchmetrics",
        library_version=torchmetrics.__version__,
        extractor=f"CLIPModel:{model_dir.name}",
        extractor_id=f"clip:{model_dir.resolve()}",
        feature_dim=int(getattr(config, "projection_dim", 0)) or None,
        resize_mode=f"CLIP processor (resize shortest edge + center crop {resolution}, normalize)",
        preprocess=PREPROCESS_RULE.format(r=resolution) + "; sent as uint8 0..255",
        resolution=resolution,
        n_real=None,
        n_generated=seen,
        params={"clip_model_dir": str(model_dir.resolve()), "definition": "max(100 * mean cos(image, text), 0)"},
    )
