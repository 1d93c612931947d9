"""Images in: folders, PIL images and tensors, all brought to one float ``(N, 3, R, R)`` convention in ``[0, 1]``.

Folders are found and read by :mod:`indomain.data` (:func:`~indomain.data.find_images`,
:func:`~indomain.data.load_rgb`), so FID/KID read a folder exactly as training does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import ACCEPTED_FORMATS, MAX_LISTED, DataError, SkippedImagesWarning, find_images, load_rgb, to_rgb

__all__ = [
    "PREPROCESS_RULE",
    "ImageFolderError",
    "ImageSource",
    "as_image_batch",
    "count_images",
    "iter_file_batches",
    "iter_image_batches",
    "list_images",
    "preprocess_image",
]

PREPROCESS_RULE = (
    "RGB as in training (indomain.data: EXIF orientation, alpha composited on white, 16-bit scaled); "
    "non-square images center-cropped to a square; PIL bicubic resize to {r}x{r} when the size differs; "
    "float32 in [0, 1]"
)


ImageSource = str | os.PathLike | Tensor | Sequence[Image.Image] | Iterable[Tensor]
"""A folder, an ``(N, 3, H, W)`` tensor, a sequence of PIL images, or an iterable of tensor batches."""


class ImageFolderError(DataError):
    """An image folder is missing or holds no usable image; the message names it."""


def _listing(root: Path, skipped: Sequence[tuple[Path, str]]) -> str:
    shown = "; ".join(f"{os.path.relpath(p, root)} ({reason})" for p, reason in skipped[:MAX_LISTED])
    return shown + (f"; ... and {len(skipped) - MAX_LISTED} more" if len(skipped) > MAX_LISTED else "")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The images below ``folder``, found by :func:`indomain.data.find_images` with the training rules.

    Recursive and sorted; hidden files and folders are ignored; a file is judged by its content, not its extension.
    Files that are not usable images are left out, with one :class:`~indomain.data.SkippedImagesWarning` listing them
    and why. Raises :class:`ImageFolderError` naming the folder when it does not exist or holds no usable image.
    """
    root = Path(folder).expanduser()
    try:
        files, skipped = find_images(root)
    except DataError as err:
        raise ImageFolderError(str(err)) from None
    if not files:
        formats = ", ".join(sorted(ACCEPTED_FORMATS))
        raise ImageFolderError(
            f"image folder {str(root)!r} holds no image ({formats}, judged by content, searched recursively)"
            + (f"; skipped: {_listing(root, skipped)}" if skipped else "")
        )
    if skipped:
        warnings.warn(
            SkippedImagesWarning(f"left out {len(skipped)} file(s) of {str(root)!r}: {_listing(root, skipped)}")
        )
    return files


def _from_pil(image: Image.Image) -> Tensor:
    """8-bit RGB PIL image -> float (3, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def _to_pil(image: Tensor) -> Image.Image:
    """(3 or 4, H, W) float [0, 1] tensor -> 8-bit PIL RGB or RGBA."""
    array = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def preprocess_image(image: Image.Image, resolution: int) -> Tensor:
    """Apply the size rule: center-crop to a square, bicubic-resize to ``resolution``.

    The image is first made RGB with :func:`indomain.data.to_rgb` (transparency on white, as for files).
    Returns a float (3, R, R) tensor in [0, 1].
    """
    image = to_rgb(image)
    w, h = image.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return _from_pil(image)


def as_image_batch(images: Tensor) -> Tensor:
    """Check an image tensor and return it as a float ``(N, 3, H, W)`` batch in ``[0, 1]`` (detached, same device).

    Accepts ``(N, C, H, W)`` or ``(C, H, W)``, uint8 in ``[0, 255]`` (divided by 255) or float in ``[0, 1]`` (with a
    1e-3 tolerance for decoder round-off, then clamped). ``C`` is 3 (RGB), 1 (grey, replicated) or 4 (RGBA, made RGB
    in 8 bits like an RGBA file: :func:`indomain.data.to_rgb`). Float images outside ``[0, 1]``, e.g. diffusers'
    ``[-1, 1]``, are refused rather than clipped.

    Raises:
        ValueError: A bad shape or value range.
        TypeError: A dtype that is neither uint8 nor floating point.
    """
    x = images.detach()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected images of shape (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"expected float images in [0, 1] or uint8 images, got dtype {x.dtype}")
    else:
        x = x.float()
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 1.0)
        # A small tolerance for decoder round-off; [-1, 1] images are a caller bug, not something to clip away.
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"expected float images in [0, 1], got values in [{lo:.3f}, {hi:.3f}] "
                "(diffusers outputs in [-1, 1] need (x + 1) / 2)"
            )
        x = x.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = torch.stack([_from_pil(to_rgb(_to_pil(im))) for im in x]).to(x.device)
    return x


def _prepare_tensor_batch(batch: Tensor, resolution: int) -> Tensor:
    """Check a tensor batch (:func:`as_image_batch`) and bring it to ``resolution`` with the size rule."""
    batch = as_image_batch(batch)
    if batch.shape[-2:] == (resolution, resolution):
        return batch.contiguous()
    return torch.stack([preprocess_image(_to_pil(img), resolution) for img in batch])


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def iter_file_batches(files: Sequence[Path], resolution: int, batch_size: int) -> Iterator[Tensor]:
    """Float ``(B, 3, resolution, resolution)`` batches in [0, 1] of image files, read lazily with ``load_rgb``."""
    for paths in _chunks(files, batch_size):
        yield torch.stack([preprocess_image(load_rgb(p), resolution) for p in paths])


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
    """Number of images when it is known before feature extraction (to fail fast on bad KID/CLIP arguments).

    Tensors and PIL sequences are counted, folders scanned (:func:`list_images`); other iterables give ``None``.
    """
    if isinstance(source, (str, os.PathLike)):
        return len(list_images(source))
    if isinstance(source, Tensor):
        return 1 if source.ndim == 3 else int(source.shape[0])
    if isinstance(source, Sequence) and all(isinstance(x, Image.Image) for x in source):
        return len(source)
    return None
