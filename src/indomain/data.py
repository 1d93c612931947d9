"""Image-folder loading for training the domain model on unlabeled images.

Rules (the README points here):

Discovery (:func:`find_images`)
    The folder is walked recursively in sorted, deterministic order. Hidden
    files and folders (name starts with ``.``, e.g. ``.DS_Store`` or macOS
    ``._photo.jpg`` resource forks) are ignored silently. Every other file is
    opened with Pillow and accepted only if its *decoded format* (not its
    extension) is one of :data:`ACCEPTED_FORMATS`: PNG, JPEG (including MPO,
    the multi-picture JPEG many phones and cameras write), WebP or BMP. Each
    accepted file is fully decoded once during the scan, so a corrupt or
    truncated file is reported before training starts, never midway through a
    run. Files are skipped, each with a reason, when they are not an image,
    are in another format (GIF, TIFF, ...), are corrupt or truncated, or are
    larger than :data:`MAX_IMAGE_PIXELS` pixels (decompression-bomb guard; the
    check reads only the header, so a bomb is never decoded). For multi-frame
    files (animated WebP/PNG, MPO) only the first frame is used.

Conversion to RGB (:func:`load_rgb`, :func:`to_rgb`)
    * EXIF orientation is applied first, so a portrait phone photo stays
      portrait.
    * Transparency (RGBA, LA, PA, palette or grayscale/RGB with a ``tRNS``
      transparent colour) is alpha-composited on **white**
      (:func:`composite_on_white`, the one compositing rule of the project).
      An alpha channel that is 0 everywhere is treated as "unset" and the
      image as opaque (some 32-bit BMP writers leave alpha at 0).
    * Grayscale (``1``, ``L``) is replicated to three channels; CMYK and other
      modes use Pillow's conversion (embedded ICC profiles are not applied).
    * 16-bit grayscale (``I;16*``) and ``I`` are assumed to span 0..65535 and
      are scaled to 8 bits by dividing by 257 (so 65535 -> 255 and mid-grey
      stays mid-grey; Pillow's plain ``convert`` would clip them to white).
      ``F`` (float) is assumed to span 0..1. Current Pillow opens 16-bit PNGs
      as ``I;16``; older versions gave ``I``. ``F`` never comes out of the
      accepted formats and is handled for completeness.

Preprocessing (:func:`resize_shorter`, :func:`to_tensor`)
    The shorter side is resized to ``resolution`` with **bicubic**
    resampling (Pillow's resize filters anti-alias when downscaling), keeping
    the aspect ratio; :func:`to_tensor` gives a float ``(3, H, W)`` tensor in
    ``[-1, 1]`` (0 -> -1, 255 -> 1). Cropping and flipping happen later, in
    latent space: ``indomain.train.build_latent_cache`` trims each resized
    image to a multiple of the VAE factor (centred), encodes it and, with
    flips on, its mirror image, and stores each VAE posterior (mean and
    log-variance) in one safetensors file; training batches crop those
    latents (centred, or at a seeded random offset) and, with flips on, take
    either orientation at random.

Image size (:class:`ImageFolderDataset`)
    An image whose shorter side is below ``resolution *``
    :data:`MIN_SIZE_FRACTION` (a quarter of the resolution) is "tiny" and is
    handled by ``min_size_policy``:

    * ``"warn-skip"`` (default): skipped, listed in the skipped-files warning;
    * ``"error"``: :class:`DataError` listing the tiny images;
    * ``"allow"``: kept and upscaled like any other small image.

    Any kept image whose shorter side is below ``resolution`` is upscaled, and
    all of them are listed in one :class:`SmallImagesWarning`.

Errors and warnings
    A missing folder, a path that is not a folder, an empty folder, or a folder
    with no usable image raises :class:`DataError` (a ``ValueError``) naming
    the folder and what was found. Skipped files are reported in a single
    :class:`SkippedImagesWarning` listing each file with its reason (the first
    :data:`MAX_LISTED` of them, then a count of the rest).
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch  # numpy and torch are imported where used, so `indomain train --help` loads neither

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_IMAGE_PIXELS",
    "MIN_SIZE_FRACTION",
    "MAX_LISTED",
    "RESAMPLE",
    "DataError",
    "SkippedImagesWarning",
    "SmallImagesWarning",
    "MinSizePolicy",
    "find_images",
    "composite_on_white",
    "load_rgb",
    "to_rgb",
    "resize_shorter",
    "to_tensor",
    "ImageFolderDataset",
]

# Pillow format names (``Image.format``) we train on. MPO is how Pillow reports
# multi-picture JPEGs from phones/cameras; they are ordinary JPEGs otherwise.
ACCEPTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP"})

# Largest image (width * height) we will decode: 8192 x 8192, ~67 MP. Above
# this a file is skipped as a possible decompression bomb. Read at call time,
# so tests and callers may monkeypatch it. Pillow's own, process-wide
# ``Image.MAX_IMAGE_PIXELS`` is left untouched.
MAX_IMAGE_PIXELS: int = 8192 * 8192

# Shorter side below resolution * MIN_SIZE_FRACTION counts as "tiny" (see
# min_size_policy): a 4x upscale mostly teaches the model blur.
MIN_SIZE_FRACTION: float = 0.25

# How many files a warning or error lists before summarising the rest.
MAX_LISTED: int = 20

# Resampling filter for the shorter-side resize.
RESAMPLE = Image.Resampling.BICUBIC

MinSizePolicy = Literal["warn-skip", "error", "allow"]
_POLICIES: tuple[str, ...] = ("warn-skip", "error", "allow")


class DataError(ValueError):
    """The image folder (or an image in it) cannot be used for training."""


class SkippedImagesWarning(UserWarning):
    """Some files in the image folder were skipped; the message lists why."""


class SmallImagesWarning(UserWarning):
    """Some images are smaller than the training resolution and get upscaled."""


class _BadImage(Exception):
    """Internal: a file is not a usable image; ``args[0]`` is the reason."""


@dataclass(frozen=True)
class _Probe:
    path: Path
    size: tuple[int, int]  # (width, height) as stored, before EXIF rotation


# --------------------------------------------------------------------------- #
# Discovery
# --------------------------------------------------------------------------- #


def _open_verified(path: Path) -> Image.Image:
    """Open, check format and size, and fully decode ``path``.

    Returns the loaded image (its file already closed). Raises ``_BadImage``
    with a human-readable reason for anything we would not train on.
    """
    try:
        # Turn Pillow's own bomb warning into an error so it is caught below
        # rather than printed; its hard limit raises DecompressionBombError.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format
                if fmt not in ACCEPTED_FORMATS:
                    raise _BadImage(f"unsupported image format {fmt}")
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise _BadImage(
                        f"decompression bomb guard: {w}x{h} = {w * h} pixels "
                        f"> MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}"
                    )
                if w == 0 or h == 0:
                    raise _BadImage(f"empty image ({w}x{h})")
                # Decode every pixel now: Image.open only parses the header,
                # so truncation would otherwise surface mid-training.
                img.load()
                return img
    except _BadImage:
        raise
    except UnidentifiedImageError:
        raise _BadImage("not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _BadImage(f"decompression bomb guard (Pillow): {e}") from None
    except Exception as e:  # noqa: BLE001
        # Pillow's decoders raise a zoo of types on bad data (OSError,
        # SyntaxError, ValueError, EOFError, struct.error, ...); all mean the
        # same thing here, and one bad file must not abort the scan.
        raise _BadImage(f"corrupt or truncated: {type(e).__name__}: {e}") from None


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Non-hidden regular files under ``root`` sorted by relative path, and the links that lead nowhere."""
    found: list[Path] = []
    odd: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune hidden dirs in place so os.walk does not descend into them.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                odd.append((Path(dirpath) / d, "symlinked folder: not followed (links could loop)"))
        for name in filenames:
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                found.append(p)
            elif p.is_symlink():
                try:
                    p.stat()
                    odd.append((p, "not a regular file"))
                except OSError as e:  # ELOOP for a loop, ENOENT for a dangling link
                    odd.append((p, "symlink loop" if e.errno == errno.ELOOP else "dangling symlink"))
            else:
                odd.append((p, "not a regular file (socket, fifo or device)"))
    # Sort on the relative POSIX path so the order is the same on any machine.
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(found, key=key), sorted(odd, key=lambda s: key(s[0]))


def list_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every non-hidden regular file under ``root``, sorted, without opening any: a cheap content key."""
    return _walk(_check_root(root))[0]


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"image folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"image folder {str(path)!r} is not a folder")
    return path


def _scan(root: str | os.PathLike[str]) -> tuple[Path, list[_Probe], list[tuple[Path, str]]]:
    root_path = _check_root(root)
    good: list[_Probe] = []
    files, skipped = _walk(root_path)
    for path in files:
        try:
            img = _open_verified(path)
        except _BadImage as e:
            skipped.append((path, str(e.args[0])))
        else:
            good.append(_Probe(path, img.size))
    skipped.sort(key=lambda s: s[0].relative_to(root_path).as_posix())
    return root_path, good, skipped


def find_images(root: str | os.PathLike[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Find every usable image under ``root``, recursively.

    Each candidate is opened with Pillow, its format checked against
    :data:`ACCEPTED_FORMATS` and fully decoded, so corrupt, truncated,
    non-image and oversized (> :data:`MAX_IMAGE_PIXELS`) files are caught here.

    Args:
        root: The folder to scan.

    Returns:
        ``(images, skipped)``: the usable image paths in sorted order, and
        ``(path, reason)`` for every other non-hidden file. Nothing is warned
        here; :class:`ImageFolderDataset` does the reporting.

    Raises:
        DataError: ``root`` does not exist or is not a folder.
    """
    _, good, skipped = _scan(root)
    return [p.path for p in good], skipped


# --------------------------------------------------------------------------- #
# Conversion to RGB
# --------------------------------------------------------------------------- #


# Modes with an alpha channel; palette alpha and tRNS keys show in ``info["transparency"]``.
_ALPHA_MODES: tuple[str, ...] = ("RGBA", "LA", "PA", "RGBa", "La")


def composite_on_white(img: Image.Image) -> Image.Image:
    """``img`` as RGB with its transparency alpha-composited on white.

    Transparency is an alpha channel, a palette's alpha or a ``tRNS``
    transparent colour; an image without any is only converted to RGB.

    Args:
        img: A Pillow image (8-bit modes; see :func:`to_rgb` for the others).

    Returns:
        A mode ``"RGB"`` image of the same size.
    """
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return img if img.mode == "RGB" else img.convert("RGB")
    # Pillow's RGBA conversion applies P palettes' alpha and tRNS keys.
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an already-oriented image of any Pillow mode to 8-bit RGB.

    Transparency is composited on white; 16-bit and ``I`` images are scaled
    from 0..65535, ``F`` from 0..1 (see the module docstring).

    Args:
        img: A Pillow image in any mode.

    Returns:
        A mode ``"RGB"`` image of the same size.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np

        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            arr = arr * 255.0
        else:
            # 16-bit full scale: 65535 / 257 == 255 exactly.
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        # A tRNS key on a 16-bit image is rare enough to ignore.
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema() == (0, 0):
            # Alpha 0 everywhere is "unset", not "invisible" (32-bit BMPs); a
            # blank white training image is never what the user meant.
            return rgba.convert("RGB")
        return composite_on_white(rgba)
    if mode == "RGB":
        return img
    # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's conversions are correct here.
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Load an image file as an upright 8-bit RGB Pillow image.

    Applies the EXIF orientation, then :func:`to_rgb`. Applies the same
    format, size and decode checks as :func:`find_images`.

    Args:
        path: The image file.

    Returns:
        A fully loaded mode ``"RGB"`` image (the file is closed).

    Raises:
        DataError: The file is not a usable image; the message names it and
            says why.
    """
    path = Path(path)
    try:
        img = _open_verified(path)
    except _BadImage as e:
        raise DataError(f"cannot load {str(path)!r}: {e.args[0]}") from None
    # Orientation first, while the EXIF block is still attached to the image.
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


# --------------------------------------------------------------------------- #
# Preprocessing
# --------------------------------------------------------------------------- #


def resize_shorter(img: Image.Image, resolution: int) -> Image.Image:
    """RGB copy of ``img`` with its shorter side resized to ``resolution`` (bicubic)."""
    if img.mode != "RGB":
        img = to_rgb(img)
    w, h = img.size
    scale = resolution / min(w, h)
    # max() guards the long side against rounding below R for extreme ratios.
    new_w = resolution if w <= h else max(resolution, round(w * scale))
    new_h = resolution if h < w else max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), RESAMPLE)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 (3, H, W) tensor in [-1, 1]."""
    import numpy as np
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- #
# Dataset
# --------------------------------------------------------------------------- #


def _format_list(items: Sequence[tuple[Path, str]], root: Path) -> str:
    def rel(p: Path) -> str:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return str(p)

    lines = [f"  {rel(p)}: {reason}" for p, reason in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return "\n".join(lines)


class ImageFolderDataset:
    """The training images of a folder (recursive), checked once, with the min-size policy applied.

    The folder is scanned once in the constructor (see :func:`find_images`);
    problems are reported there, not during training. The trainer reads
    :attr:`paths` with :func:`load_rgb` into its latent cache.

    Attributes:
        root: The scanned folder.
        paths: The images used, in sorted order.
        skipped: ``(path, reason)`` for every file not used, tiny images
            included when they were skipped.
        upscaled: Kept images whose shorter side is below ``resolution``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        resolution: int,
        min_size_policy: MinSizePolicy = "warn-skip",
    ) -> None:
        """Scan ``root`` and apply the min-size policy.

        Args:
            root: Folder of images, searched recursively.
            resolution: Training resolution ``R``.
            min_size_policy: What to do with images whose shorter side is
                below ``resolution * MIN_SIZE_FRACTION``: ``"warn-skip"``,
                ``"error"`` or ``"allow"`` (see the module docstring).

        Raises:
            DataError: The folder is missing, empty, has no usable image, or
                (with ``"error"``) has tiny images.
            ValueError: Bad ``resolution`` or ``min_size_policy``.

        Warns:
            SkippedImagesWarning: Once, listing every skipped file and why.
            SmallImagesWarning: Once, listing images that will be upscaled.
        """
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if min_size_policy not in _POLICIES:
            raise ValueError(f"min_size_policy must be one of {_POLICIES}, got {min_size_policy!r}")
        self.resolution = resolution
        self.min_size_policy = min_size_policy

        root_path, good, skipped = _scan(root)
        self.root = root_path
        if not good and not skipped:
            raise DataError(f"image folder {str(root_path)!r} is empty (no files found, hidden files ignored)")

        min_side = resolution * MIN_SIZE_FRACTION
        tiny = [
            (p.path, f"too small: {p.size[0]}x{p.size[1]}, shorter side < {min_side:g} "
                     f"(resolution {resolution} * {MIN_SIZE_FRACTION:g})")
            for p in good
            if min(p.size) < min_side
        ]
        if tiny and min_size_policy == "error":
            raise DataError(
                f"{len(tiny)} image(s) in {str(root_path)!r} are far smaller than the "
                f"resolution {resolution} (min_size_policy='error'):\n"
                + _format_list(tiny, root_path)
            )
        if tiny and min_size_policy == "warn-skip":
            tiny_paths = {p for p, _ in tiny}
            good = [p for p in good if p.path not in tiny_paths]
            # Keep the report in path order, tiny images among the others.
            skipped = sorted(skipped + tiny, key=lambda s: s[0].relative_to(root_path).as_posix())

        if not good:
            n_files = len(skipped)
            raise DataError(
                f"no usable image in {str(root_path)!r}: all {n_files} file(s) were skipped:\n"
                + _format_list(skipped, root_path)
            )

        self.paths: list[Path] = [p.path for p in good]
        self.skipped: list[tuple[Path, str]] = skipped
        small = [(p.path, f"{p.size[0]}x{p.size[1]}") for p in good if min(p.size) < resolution]
        self.upscaled: list[Path] = [p for p, _ in small]

        if skipped:
            warnings.warn(
                SkippedImagesWarning(
                    f"skipped {len(skipped)} of {len(skipped) + len(good)} file(s) in "
                    f"{str(root_path)!r}:\n" + _format_list(skipped, root_path)
                ),
                stacklevel=2,
            )
        if small:
            warnings.warn(
                SmallImagesWarning(
                    f"{len(small)} image(s) in {str(root_path)!r} have a shorter side below "
                    f"the resolution {resolution} and will be upscaled:\n"
                    + _format_list(small, root_path)
                ),
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------- #
# Hugging Face `datasets` input (optional dependency)
# --------------------------------------------------------------------------- #


class DatasetImages(Sequence):
    """The images of one column of a Hugging Face `datasets` split, standing where the list of image paths stands.

    ``images[i]`` is the row's image as upright 8-bit RGB (EXIF orientation and :func:`to_rgb`, as
    :func:`load_rgb`); ``fingerprint`` identifies the content for the latent cache's key. Picklable (the Arrow
    table is memory-mapped), so DataLoader workers can read it.
    """

    def __init__(self, dataset: Any, column: str, source: str) -> None:
        self.dataset, self.column, self.source = dataset, column, source
        self.fingerprint = f"{source}:{column}:{len(dataset)}:{getattr(dataset, '_fingerprint', '')}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Image.Image:  # type: ignore[override]
        value = self.dataset[int(i)][self.column]
        if not isinstance(value, Image.Image):
            raise DataError(f"{self.source}: row {i} of column {self.column!r} is not an image ({type(value).__name__})")
        return to_rgb(ImageOps.exif_transpose(value))

    def __str__(self) -> str:
        return self.source


def upright_size(image: str | os.PathLike[str] | Image.Image) -> tuple[int, int]:
    """(height, width) of an image as :func:`load_rgb` returns it (EXIF orientation applied), from the file's header
    alone (a `DatasetImages` item is already upright)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    with Image.open(image) as img:
        w, h = img.size
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
    return (w, h) if turned else (h, w)


def load_image_dataset(name: str | None, data_dir: str | None, split: str = "train",
                       column: str | None = None) -> DatasetImages:
    """A split of a `datasets` dataset as `DatasetImages`: ``load_dataset(name or data_dir, data_dir=..., split=...)``.

    ``name`` is a hub id or a builder (``imagefolder``, ``parquet``, ...); ``data_dir`` a local folder (alone, the
    builder is inferred from its files). ``column`` defaults to the only ``Image`` column. Errors name the flag.
    """
    try:
        import datasets
    except ImportError:
        raise ValueError("--dataset-name / --dataset-dir need the datasets package: pip install 'indomain[datasets]'") from None
    if name is None and data_dir is None:
        raise ValueError("give --dataset-name or --dataset-dir")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--dataset-dir {data_dir!r} is not a folder")
    source = name or str(data_dir)
    try:
        ds = datasets.load_dataset(name or str(data_dir), data_dir=str(data_dir) if name and data_dir else None, split=split)
    except ValueError as e:
        raise DataError(f"--dataset-split {split!r} of {source!r}: {e}") from None
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot load the dataset {source!r}: {e}") from None
    images = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
    if column is None:
        if len(images) != 1:
            raise DataError(f"{source!r} has {'no' if not images else len(images)} image columns "
                            f"({', '.join(ds.column_names)}); name one with --image-column")
        column = images[0]
    elif column not in ds.column_names:
        raise DataError(f"--image-column {column!r} is not a column of {source!r} (columns: {', '.join(ds.column_names)})")
    elif column not in images:
        raise DataError(f"--image-column {column!r} of {source!r} is not an image column ({ds.features[column]})")
    if len(ds) == 0:
        raise DataError(f"the {split!r} split of {source!r} is empty")
    return DatasetImages(ds, column, source)
