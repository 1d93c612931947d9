"""Non-finite values (NaN, inf): the one check, and the error every command reports as one line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class NonFiniteError(ValueError):
    """A loss, weight, latent, image or field was NaN or infinite; nothing from it was saved."""


def is_finite_number(value: object) -> bool:
    """A real number (not a bool, not a string) that is neither NaN nor infinite: a score a table or plot can use."""
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def all_finite(tensors: "Iterable[torch.Tensor]") -> bool:
    """One cheap reduction per tensor (the largest magnitude), no forward pass: every value is finite."""
    import torch

    with torch.no_grad():
        peaks = [t.detach().abs().amax().float() for t in tensors if t.numel()]
        return not peaks or bool(torch.isfinite(torch.stack(peaks)).all())


def require_finite(tensors: "torch.Tensor | Iterable[torch.Tensor]", what: str) -> None:
    """Raise `NonFiniteError` naming ``what`` unless every value is finite."""
    import torch

    if not all_finite([tensors] if isinstance(tensors, torch.Tensor) else tensors):
        raise NonFiniteError(f"{what}: not finite (NaN or inf); nothing was saved")
