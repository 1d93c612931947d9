"""What every metric returns (:class:`MetricResult`) and raises when a model file is missing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..outputs import to_json

__all__ = ["MetricResult", "MissingWeightsError"]


class MissingWeightsError(FileNotFoundError):
    """A model file or directory that cannot be downloaded here is missing; the message says how to supply it."""


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
        return to_json(self.to_dict(), indent=indent, sort_keys=False)
