"""The VAE latent cache of `indomain train`: built in shards by every process, read back by memory map.

Layout of a cache folder (``--latent-cache``, default ``<output>/latent_cache``)::

    latents-00000.safetensors   images [0, S)      each image i: "{i}" (2C, h, w) posterior mean and log-variance,
    latents-00001.safetensors   images [S, 2S)     "{i}_flip" (its mirror image, when flips are on), "{i}_size"
    ...                                            (original height, width: SDXL's size conditioning)

``S`` is ``--cache-shard-size``. Each shard's safetensors metadata holds the cache key (image paths, sizes and
mtimes; resolution; flips; shard size; the VAE's config and weight files), its index and image range, and the
process that wrote it. So:

- **every process encodes its own share**: the missing shards are dealt round-robin over the processes, and each
  encodes its images in batches of ``--cache-batch-size`` (images of one shape share a VAE call);
- **a shard is written atomically** (a hidden temporary file, then ``os.replace``): a kill loses at most the shards
  being written, and the rerun encodes only the shards that are missing or stale;
- **peak memory is one shard** (plus the batch in flight), not the dataset;
- **a stale shard is never read**: a shard whose key differs (other images, resolution, VAE, ...) is rebuilt, and
  `ShardedLatents` refuses one that changed under it; a file of a shard's name that is not an indomain shard is
  refused, never overwritten.

Training reads shards through `ShardedLatents` (safetensors ``safe_open``: the file is memory-mapped and only the
requested tensor is copied). `ImagePixels` is the one image → pixels transform, shared by the cache and by
``--no-latent-cache`` (images encoded on the fly, in a DataLoader's worker processes).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import progress
from .data import RESAMPLE, DatasetImages, load_rgb, resize_shorter, to_tensor
from .outputs import atomic_path

if TYPE_CHECKING:
    import torch

FORMAT = "indomain-latents/2"
SHARD_PATTERN = "latents-{:05d}.safetensors"


def shard_name(index: int) -> str:
    """The file name of shard ``index``."""
    return SHARD_PATTERN.format(index)


def num_shards(n: int, shard_size: int) -> int:
    """How many shards hold ``n`` images."""
    return math.ceil(n / shard_size)


def vae_fingerprint(vae: Any, vae_id: str) -> str:
    """What identifies a VAE's latents: its config and, for a local prior, the size and mtime of its weight files."""
    parts = [vae_id, json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}, sort_keys=True,
                                default=str)]
    folder = Path(vae_id) / "vae"
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def aspect_buckets(resolution: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(height, width) buckets for aspect-ratio bucketing: sides multiples of ``step``, area at most ``resolution``²
    (the largest such height for each width), aspect ratios from 1:``max_ratio`` to ``max_ratio``:1, square included."""
    area, found = resolution * resolution, set()
    for w in range(step, int(resolution * math.sqrt(max_ratio)) + 1, step):
        h = (area // w) // step * step
        if h >= step and 1 / max_ratio <= w / h <= max_ratio:
            found.add((h, w))
    found.add((resolution // step * step, resolution // step * step))
    return sorted(found, key=lambda hw: hw[1] / hw[0])


def bucket_for(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to the image's."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda hw: abs(math.log(hw[1] / hw[0]) - ratio))


def cache_key(paths: Sequence[Path], resolution: int, flip: bool, shard_size: int, vae_fp: str,
              buckets: Sequence[tuple[int, int]] | None = None) -> str:
    """The key every shard carries: a shard with another key belongs to other images or settings."""
    h = hashlib.sha256()
    if isinstance(paths, DatasetImages):  # a `datasets` split: its content fingerprint
        h.update(paths.fingerprint.encode())
    else:
        for p in paths:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(f"{resolution}:{flip}:{shard_size}:{vae_fp}:sizes".encode())
    if buckets:
        h.update(f"buckets:{list(buckets)}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# Images -> pixels (shared by the cache and on-the-fly encoding)


class ImagePixels:
    """Map-style dataset: ``(i, flip)`` -> ``{"index", "flip", "pixels" (3, h, w) in [-1, 1], "size" (H, W)}``.

    Image ``i`` is resized on its shorter side to ``resolution`` and trimmed (centred) to a multiple of the VAE
    factor; crops to the training size happen later, in latent space. With ``buckets`` (aspect-ratio bucketing) it is
    instead resized to cover its bucket (`bucket_for`) and centre-cropped to it exactly; ``"crop"`` is then the
    (top, left) of that crop in the resized image, SDXL's crop coordinates. Picklable, so DataLoader workers can run it.
    """

    def __init__(self, paths: Sequence[Path] | DatasetImages, resolution: int, factor: int,
                 buckets: Sequence[tuple[int, int]] | None = None) -> None:
        self.paths = paths if isinstance(paths, DatasetImages) else list(paths)
        self.resolution, self.factor, self.buckets = resolution, factor, list(buckets) if buckets else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, bool]) -> dict:
        i, flip = key if isinstance(key, tuple) else (key, False)
        original = self.paths[i] if isinstance(self.paths, DatasetImages) else load_rgb(self.paths[i])
        if self.buckets:
            bh, bw = bucket_for(original.height, original.width, self.buckets)
            scale = max(bw / original.width, bh / original.height)
            size = (max(bw, round(original.width * scale)), max(bh, round(original.height * scale)))
            img = original.resize(size, RESAMPLE) if size != original.size else original
            top, left = (img.height - bh) // 2, (img.width - bw) // 2
            pixels = to_tensor(img.crop((left, top, left + bw, top + bh)))
            return {"index": i, "flip": flip, "pixels": pixels.flip(-1) if flip else pixels,
                    "size": (original.height, original.width), "crop": (top, left)}
        img = resize_shorter(original, self.resolution)
        w, h = (s - s % self.factor for s in img.size)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        pixels = to_tensor(img.crop((left, top, left + w, top + h)))
        return {"index": i, "flip": flip, "pixels": pixels.flip(-1) if flip else pixels,
                "size": (original.height, original.width)}


def as_list(items: list) -> list:
    """DataLoader collate that keeps the items as they are (images of a batch may differ in shape)."""
    return items


def encode_items(vae: Any, items: Sequence[dict], device: Any) -> list[torch.Tensor]:
    """The VAE posterior of each item's pixels as one (2C, h, w) float32 CPU tensor (mean, then log-variance).

    Items of one shape go through the VAE in one call; the result is in the order of ``items``.
    """
    import torch

    out: list[torch.Tensor | None] = [None] * len(items)
    by_shape: dict[tuple, list[int]] = {}
    for j, item in enumerate(items):
        by_shape.setdefault(tuple(item["pixels"].shape), []).append(j)
    with torch.no_grad():
        for group in by_shape.values():
            x = torch.stack([items[j]["pixels"] for j in group]).to(device, vae.dtype)
            dist = vae.encode(x).latent_dist
            params = torch.cat([dist.mean, dist.logvar], 1).float().cpu()
            for j, p in zip(group, params):
                out[j] = p.contiguous()
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# Building


def _shard_state(file: Path, key: str, index: int, start: int, count: int) -> str:
    """``"ok"`` (our shard, this key, this range), ``"missing"``, ``"stale"`` (ours, another key or range); a file
    that is not an indomain shard raises ValueError naming it."""
    from safetensors import safe_open

    if not (file.is_file() or file.is_symlink()):
        return "missing"
    try:
        with safe_open(file, "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - SafetensorError, OSError: not a file of ours either way
        meta = {}
    if meta.get("format") != FORMAT or "key" not in meta:
        raise ValueError(f"{file} was not written by `indomain train` (not a latent cache shard); it is left as it "
                         "is: choose another --latent-cache folder or move the file away")
    if (meta["key"], meta.get("shard"), meta.get("start"), meta.get("count")) != (key, str(index), str(start), str(count)):
        return "stale"
    return "ok"


def missing_shards(cache_dir: Path, key: str, n: int, shard_size: int) -> list[int]:
    """Indices of the shards that must be (re)encoded: missing or stale. Reads only the headers."""
    todo = []
    for s in range(num_shards(n, shard_size)):
        start = s * shard_size
        if _shard_state(cache_dir / shard_name(s), key, s, start, min(shard_size, n - start)) != "ok":
            todo.append(s)
    return todo


def remove_leftovers(cache_dir: Path) -> None:
    """Delete the temporary files of shards whose writing was killed (only ours: ``.latents-NNNNN.safetensors.*.tmp``)."""
    if cache_dir.is_dir():
        for p in cache_dir.glob(".latents-*.safetensors.*.tmp"):
            if p.is_file() and not p.is_symlink():
                p.unlink()


def build_shards(paths: Sequence[Path], vae: Any, cache_dir: Path, key: str, *, resolution: int, flip: bool,
                 shard_size: int, batch_size: int, todo: Sequence[int], device: Any, num_workers: int = 0,
                 rank: int = 0, show_progress: bool = True, on_shard: Callable[[Path], None] | None = None,
                 buckets: Sequence[tuple[int, int]] | None = None) -> list[Path]:
    """Encode the shards ``todo`` (this process's share) into ``cache_dir``; returns the files written.

    Images are read (in ``num_workers`` DataLoader workers when > 0), encoded ``batch_size`` images at a time (with
    their mirror images in the same VAE call), gathered per shard and written atomically. ``on_shard(file)`` runs
    after each shard is in place.
    """
    import torch
    from safetensors.torch import save_file

    n = len(paths)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    dataset = ImagePixels(paths, resolution, factor, buckets)
    # one batch = up to batch_size images of one shard (never two shards), each with its mirror image
    batches: list[list[tuple[int, bool]]] = []
    for s in todo:
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        for a in range(start, stop, batch_size):
            batches.append([(i, f) for i in range(a, min(stop, a + batch_size)) for f in ((False, True) if flip else (False,))])
    loader: Iterable[list[dict]]
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=as_list)
    else:
        loader = (as_list([dataset[k] for k in batch]) for batch in batches)
    written: list[Path] = []
    total = sum(min(n, (s + 1) * shard_size) - s * shard_size for s in todo)
    bar = progress(total=total, desc="encoding latents", unit="img", disable=not show_progress)
    shards = iter(todo)
    current, tensors, remaining = -1, {}, 0
    try:
        for items in loader:
            if remaining == 0:  # the first batch of the next shard
                current = next(shards)
                start = current * shard_size
                remaining, tensors = min(shard_size, n - start), {}
            for item, params in zip(items, encode_items(vae, items, device)):
                i = item["index"]
                tensors[f"{i}_flip" if item["flip"] else f"{i}"] = params
                if not item["flip"]:
                    tensors[f"{i}_size"] = torch.tensor(item["size"])
                    if "crop" in item:
                        tensors[f"{i}_crop"] = torch.tensor(item["crop"])
                    remaining -= 1
                    bar.update(1)
            if remaining == 0:
                start = current * shard_size
                meta = {"format": FORMAT, "key": key, "n": str(n), "shard": str(current), "start": str(start),
                        "count": str(min(shard_size, n - start)), "flip": str(flip), "rank": str(rank)}
                file = cache_dir / shard_name(current)
                with atomic_path(file) as tmp:
                    save_file(tensors, tmp, metadata=meta)
                tensors = {}
                written.append(file)
                if on_shard is not None:
                    on_shard(file)
    finally:
        bar.close()
    return written


# ----------------------------------------------------------------------------------------------------
# Reading


class ShardedLatents:
    """Read access to a built cache: ``params(i, flip)`` and ``size(i)``, by memory map.

    At most ``max_open`` shards are open at once (least recently used closed first), so a cache of thousands of
    shards stays within the process's file limit. Opening a shard checks its key: a shard that was rebuilt for
    other images or settings while this run reads the folder is refused.
    """

    def __init__(self, cache_dir: Path, key: str, n: int, shard_size: int, max_open: int = 64) -> None:
        self.dir, self.key, self.n, self.shard_size, self.max_open = Path(cache_dir), key, n, shard_size, max_open
        self._open: OrderedDict[int, Any] = OrderedDict()

    def _shard(self, i: int) -> Any:
        from safetensors import safe_open

        s = i // self.shard_size
        handle = self._open.get(s)
        if handle is not None:
            self._open.move_to_end(s)
            return handle
        file = self.dir / shard_name(s)
        try:
            handle = safe_open(file, "pt")
        except Exception as e:  # noqa: BLE001
            raise OSError(f"latent cache shard {file} cannot be read: {e}") from None
        meta = handle.metadata() or {}
        if meta.get("key") != self.key or meta.get("shard") != str(s):
            raise ValueError(f"latent cache shard {file} belongs to other images or settings (key {meta.get('key')!r}, "
                             f"expected {self.key!r}); it changed during this run")
        self._open[s] = handle
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle

    def params(self, i: int, flip: bool) -> torch.Tensor:
        """Image ``i``'s (2C, h, w) posterior parameters (its mirror image's with ``flip``)."""
        return self._shard(i).get_tensor(f"{i}_flip" if flip else f"{i}")

    def size(self, i: int) -> list[int]:
        """Image ``i``'s original (height, width)."""
        return self._shard(i).get_tensor(f"{i}_size").tolist()

    def crop(self, i: int) -> list[int]:
        """With aspect buckets: the (top, left) pixel crop image ``i`` was encoded with."""
        return self._shard(i).get_tensor(f"{i}_crop").tolist()

    def shape(self, i: int) -> tuple[int, ...]:
        """The (2C, h, w) shape of image ``i``'s latents, from the shard's header (nothing is read)."""
        return tuple(self._shard(i).get_slice(f"{i}").get_shape())


def shard_writers(cache_dir: Path, n: int, shard_size: int) -> dict[int, int]:
    """Shard index -> the process rank that wrote it (from the metadata), for tests and reports."""
    from safetensors import safe_open

    found = {}
    for s in range(num_shards(n, shard_size)):
        with safe_open(cache_dir / shard_name(s), "pt") as f:
            found[s] = int((f.metadata() or {}).get("rank", -1))
    return found


def split_round_robin(todo: Sequence[int], rank: int, world: int) -> list[int]:
    """This process's share of the shards to encode: every ``world``-th, starting at ``rank``."""
    return list(todo[rank::world])
