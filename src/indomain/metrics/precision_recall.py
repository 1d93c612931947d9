"""Improved precision and recall: k-NN estimates of two manifolds in a feature space (Kynkäänniemi et al. 2019).

Kynkäänniemi, Karras, Laine, Lehtinen, Aila, "Improved Precision and Recall Metric for Assessing Generative Models",
NeurIPS 2019, Sec. 2. Each feature set ``Φ`` stands for a manifold: the union of the balls around its points whose
radius is the distance to the point's k-th nearest neighbour in ``Φ`` (itself not counted). Then

    precision = share of the generated features that lie in the real manifold    (are the samples realistic?)
    recall    = share of the real features that lie in the generated manifold    (do the samples cover the reals?)

Unlike a Fréchet distance, which compares only means and covariances, both look at each sample: samples off the
real manifold lower precision, a set that misses much of it lowers recall. Both depend on ``k`` and on the set sizes
(a ball's radius shrinks as its set grows). Against a fixed real set, precision is a per-sample share with a binomial
standard error, comparable across generated-set sizes; compare recall at equal N and k. Pure torch, distances in
float64, computed in chunks of ``chunk_size`` query rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["PrecisionRecall", "in_manifold", "knn_radii", "precision_recall"]


class PrecisionRecall(NamedTuple):
    """The two shares (each in ``[0, 1]``), the ``k`` of the k-NN radii and the two set sizes."""

    precision: float
    recall: float
    k: int
    n_real: int
    n_fake: int


def _check(features: Tensor, name: str) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix, got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} holds non-finite values")
    return features.detach().to("cpu", torch.float64)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    # Exact differences, not the |a|^2 + |b|^2 - 2ab expansion: a point's distance to its own copy is exactly 0.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: Tensor, k: int = 3, chunk_size: int = 1024) -> Tensor:
    """``(N,)`` float64: each point's distance to its k-th nearest neighbour among the others in ``features``."""
    x = _check(features, "features")
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        raise ValueError(f"k-NN radii with k={k} need more than k points, got {n}: use more images or a smaller k")
    radii = []
    for i in range(0, n, chunk_size):
        d = _distances(x[i : i + chunk_size], x)  # (chunk, N), the row's own point at distance 0
        # the k+1 smallest distances include the point itself (0), so the (k+1)-th is its k-th nearest other point
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def in_manifold(queries: Tensor, manifold: Tensor, radii: Tensor, chunk_size: int = 1024) -> Tensor:
    """``(Q,)`` bool: does each query lie in some ball ``|q - m_j| <= radii[j]`` of the manifold's points ``m_j``?"""
    q, m = _check(queries, "queries"), _check(manifold, "manifold")
    if q.shape[1] != m.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features but the manifold has {m.shape[1]}")
    if radii.shape != (m.shape[0],):
        raise ValueError(f"radii must have shape ({m.shape[0]},), got {tuple(radii.shape)}")
    r = radii.detach().to("cpu", torch.float64)
    inside = [(_distances(q[i : i + chunk_size], m) <= r).any(dim=1) for i in range(0, q.shape[0], chunk_size)]
    return torch.cat(inside) if inside else torch.zeros(0, dtype=torch.bool)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk_size: int = 1024) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` ``(N_f, D)`` against ``real`` ``(N_r, D)`` features, k-NN radii.

    Raises ``ValueError`` when either set has ``k`` points or fewer (its k-NN radii do not exist).
    """
    for name, x in (("real", real), ("fake", fake)):
        if x.ndim == 2 and x.shape[0] <= k:
            raise ValueError(f"precision and recall with k={k} need more than {k} {name} features, got {x.shape[0]}")
    real_radii = knn_radii(real, k, chunk_size)
    fake_radii = knn_radii(fake, k, chunk_size)
    precision = in_manifold(fake, real, real_radii, chunk_size).double().mean().item()
    recall = in_manifold(real, fake, fake_radii, chunk_size).double().mean().item()
    return PrecisionRecall(precision, recall, k, real.shape[0], fake.shape[0])
