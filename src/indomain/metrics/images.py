"""Images in: folders, PIL images and tensors, all brought to one float ``(N, 3, R, R)`` convention in ``[0, 1]``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "PREPROCESS_RULE",
    "ImageFolderError",
    "ImageSource",
    "count_images",
    "iter_file_batches",
    "iter_image_batches",
    "list_images",
    "load_image",
    "preprocess_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
PREPROCESS_RULE = (
    "RGB (alpha composited on white); non-square images center-cropped to a square; "
    "PIL bicubic resize to {r}x{r} when the size differs; float32 in [0, 1]"
)


ImageSource = str | os.PathLike | Tensor | Sequence[Image.Image] | Iterable[Tensor]
"""A folder, an ``(N, 3, H, W)`` tensor, a sequence of PIL images, or an iterable of tensor batches."""


class ImageFolderError(ValueError):
    """An image folder is missing, empty, or holds an unreadable image; the message names it."""


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


def iter_file_batches(files: Sequence[Path], resolution: int, batch_size: int) -> Iterator[Tensor]:
    for paths in _chunks(files, batch_size):
        yield torch.stack([preprocess_image(load_image(p), resolution) for p in paths])


def iter_image_batches(source: ImageSource, resolution: int, batch_size: int = 50) -> Iterator[Tensor]:
    """Yield float ``(B, 3, resolution, resolution)`` batches in [0, 1] from any :data:`ImageSource`.

    Folders are read lazily, so a large folder never sits in memory at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, (str, os.PathLike)):
        yield from iter_file_batches(list_images(source), resolution, batch_size)
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


def count_images(source: ImageSource) -> int | None:
    """Number of images when it is known without decoding them (used to fail fast on bad KID/CLIP arguments)."""
    if isinstance(source, (str, os.PathLike)):
        return len(list_images(source))
    if isinstance(source, Tensor):
        return 1 if source.ndim == 3 else int(source.shape[0])
    if isinstance(source, Sequence) and all(isinstance(x, Image.Image) for x in source):
        return len(source)
    return None
