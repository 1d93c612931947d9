"""FID and KID of generated images against real ones, in any extractor's feature space (:func:`image_metrics`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torchmetrics
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .images import PREPROCESS_RULE, ImageSource, count_images, iter_image_batches
from .result import MetricResult
from .stats import FeatureStats, describe_extractor, extract_features, real_image_stats, resolve_resolution

__all__ = ["check_kid_subset", "image_metrics"]


class _PrecomputedFeatures(nn.Module):
    """Identity "extractor": torchmetrics computes its statistic on features we extracted (and cached) ourselves."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics instead of probing with a dummy image

    def forward(self, features: Tensor) -> Tensor:
        return features


def check_kid_subset(subset_size: int, n_real: int | None, n_generated: int | None) -> None:
    """Refuse a KID subset size below 1 or above either set's size (``None``: not known yet), naming the numbers."""
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
    resolution = resolve_resolution(extractor, resolution)
    if "kid" in metrics:  # fail before the expensive extraction when counts are known
        n_real = real.n if isinstance(real, FeatureStats) else count_images(real)
        check_kid_subset(kid_subset_size, n_real, count_images(generated))

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
