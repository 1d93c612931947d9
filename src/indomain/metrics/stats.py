"""Features, their statistics and the Fréchet distance; the cache of real-image statistics.

Real-image statistics are cached per (folder content, extractor identity, resolution) as safetensors; see
:func:`real_image_stats`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..data import list_files
from ..outputs import atomic_path
from .images import iter_file_batches, list_images

__all__ = [
    "STATS_CACHE_ENV",
    "ExtractorInfo",
    "FeatureStats",
    "default_cache_dir",
    "describe_extractor",
    "extract_features",
    "frechet_distance",
    "real_image_stats",
    "resolve_resolution",
    "weights_digest",
]

STATS_CACHE_ENV = "INDOMAIN_STATS_CACHE"
# Part of the cache key: bump it whenever the loading/preprocessing rule changes, so stale statistics are not reused.
# 2: folders are read by indomain.data (files judged by content, EXIF orientation, 16-bit scaled, not clipped).
PREPROCESS_VERSION = "2"


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


def weights_digest(module: nn.Module) -> str:
    """sha256 (hex) over the names, dtypes, shapes and bytes of ``module``'s state dict.

    The identity of a module's weights: retraining an extractor changes it, and so its statistics cache key.
    """
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
        identity = f"{cls.__module__}.{cls.__qualname__}:sha256={weights_digest(extractor)[:16]}"
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
        """Write atomically, so a killed run never leaves a truncated cache entry."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "mu": self.mu.contiguous(),
            "sigma": self.sigma.contiguous(),
            "n": torch.tensor(self.n, dtype=torch.int64),
            "features": self.features.contiguous(),
        }
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={**self.metadata, "n": str(self.n)})

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


def resolve_resolution(extractor: nn.Module, resolution: int | None) -> int:
    """The evaluation resolution: ``resolution`` if given, else the extractor's ``input_resolution``."""
    resolution = resolution if resolution is not None else getattr(extractor, "input_resolution", None)
    if resolution is None:
        raise ValueError("pass resolution=: the extractor does not declare an input_resolution")
    if int(resolution) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return int(resolution)


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
    resolution = resolve_resolution(extractor, resolution)
    root = Path(folder).expanduser()
    info = describe_extractor(extractor)
    if not root.is_dir():
        list_images(root)  # raises the ImageFolderError that names the problem
    # the key lists files without decoding them, so a cache hit costs no pass over the images
    key = _stats_cache_key(root, list_files(root), info.identity, resolution)
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
    files = list_images(root)
    features = extract_features(extractor, iter_file_batches(files, resolution, batch_size), device)
    stats = FeatureStats.from_features(features, metadata)
    if cache_file is not None:
        stats.save(cache_file)
        stats.metadata.update(cache="miss", cache_file=str(cache_file))
    else:
        stats.metadata["cache"] = "disabled"
    return stats
