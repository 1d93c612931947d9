r"""Multi-guidance: the combiner behind guidance-decoupled in-domain sampling.

Every sampler step combines noise predictions around one unconditional prediction ``eps_u``:

.. math::

    \hat\epsilon = \epsilon_u + \sum_k w_k \, (\epsilon_k - \epsilon_u)
                 = (1 - \textstyle\sum_k w_k)\, \epsilon_u + \sum_k w_k\, \epsilon_k

(Cao et al. 2025, Eq. C, "GCFG"). ``eps_u`` is the unconditional prediction of one chosen model (by default
the frozen prior fed the empty prompt). Each term ``k`` names its own model (the prior, the null-text domain
model, a customised or LoRA'd prior, ...), its own condition and its own weight; a negative weight acts as a
negative prompt. The paper's sampler (Eq. A) is the case
``eps_prior(x, ∅) + w_d (eps_domain(x) - eps_prior(x, ∅)) + w_c (eps_prior(x, c) - eps_prior(x, ∅))``.

**Which space.** Terms are combined in the shared *prediction space* of the models (``epsilon`` or
``v_prediction``), at a shared ``x_t`` and ``t``. For a fixed ``x_t`` both eps and v are affine functions
of the predicted clean sample ``x0``, and the combination above is affine (its coefficients sum to 1), so
combining in eps space, in v space or in x0 space gives the same sampler update. Mixing models with
*different* prediction types in one combination is refused with a clear error, rather than converted
silently: it almost always means a mismatched checkpoint.

A noise predictor is any callable ``(x_t, t, cond) -> prediction``, so UNets, LoRA'd UNets and analytic
models plug in alike. Requests to the same model are batched into one call (conditions concatenated
along the batch axis), and a term's prediction that cannot change the result is never computed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]

PRIOR = "prior"
DOMAIN = "domain"
DOMAIN_TEXT = "domain_text"  # the domain model with the prior's text pathway put back (nulltext.prior_text_pathway)
# The default weights (w_d, w_c) of each guidance form of `indomain generate` (one rule for every domain; the
# measurements behind them: docs/RESULTS.md, "The domain under a prompt"). "decoupled" keeps the paper's official values.
DEFAULT_WEIGHTS = {"decoupled": (2.5, 2.5), "domain-text": (4.0, 2.5), "domain-text-bands": (4.0, 6.0)}
# domain-text-bands: the weight of the prompt term's low band (its layout and palette), and the band's edge: the
# Gaussian's standard deviation as a fraction of the latent's side (1.5 latent pixels of the emoji world's 8)
DEFAULT_LAYOUT_GUIDANCE_SCALE = 1.0
LAYOUT_SIGMA = 0.1875


@dataclass(frozen=True)
class Branch:
    """One model evaluation: ``models[model](x_t, t, cond)``. ``cond`` is a tensor, a dict of tensors or None."""

    model: str
    cond: Any = None


@dataclass(frozen=True)
class Guidance:
    """One guidance term ``weight * (models[model](x_t, t, cond) - eps_u)``.

    ``start``/``stop`` are fractions of the trajectory (0 = first step) during which the term is
    active, as diffusers' ``control_guidance_start/end``. ``lowpass`` keeps only the term's low band:
    ``weight * lowpass(eps_k − eps_u, lowpass)`` (see :func:`lowpass`); None keeps every frequency.
    """

    model: str
    cond: Any = None
    weight: float = 1.0
    start: float = 0.0
    stop: float = 1.0
    lowpass: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.weight)):
            raise ValueError(f"guidance weight for model {self.model!r} must be finite, got {self.weight!r}")
        if not (0.0 <= self.start < self.stop <= 1.0):
            raise ValueError(
                f"guidance interval for model {self.model!r} must satisfy 0 <= start < stop <= 1, "
                f"got start={self.start!r}, stop={self.stop!r}"
            )
        if self.lowpass is not None and not (math.isfinite(self.lowpass) and self.lowpass > 0):
            raise ValueError(f"lowpass of the term for model {self.model!r} must be a positive number, got {self.lowpass!r}")

    @property
    def branch(self) -> Branch:
        return Branch(self.model, self.cond)

    def active(self, step: int, num_steps: int) -> bool:
        """Whether the term applies at ``step`` of ``num_steps`` (diffusers' ControlNet window rule)."""
        return self.weight != 0.0 and step / num_steps >= self.start and (step + 1) / num_steps <= self.stop


@dataclass(frozen=True)
class GuidancePlan:
    """The unconditional branch plus the weighted terms around it."""

    uncond: Branch
    terms: tuple[Guidance, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))


@dataclass
class GuidanceOutput:
    """The combined prediction and every branch that went into it (``eps_u`` is None when it was skipped)."""

    pred: torch.Tensor
    eps_u: torch.Tensor | None
    eps_k: list[torch.Tensor] = field(default_factory=list)
    terms: list[Guidance] = field(default_factory=list)


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` blurred over its last two (spatial) axes by a Gaussian of standard deviation ``sigma`` times the shorter
    side, so that one setting means the same scale of layout at any resolution; edges are replicated, so a constant
    field is kept as it is."""
    h, w = x.shape[-2:]
    s = sigma * min(h, w)
    r = max(1, int(3 * s))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * s * s))
    g = g / g.sum()
    flat = x.reshape(-1, 1, h, w)
    flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    return flat.reshape(x.shape)


def combine(eps_u: torch.Tensor | None, eps_k: Sequence[torch.Tensor], w_k: Sequence[float],
            lowpass_k: Sequence[float | None] | None = None) -> torch.Tensor:
    """``eps_u + Σ_k w_k (eps_k − eps_u)``, with the difference of a term whose ``lowpass_k`` is set replaced by its
    low band (:func:`lowpass`).

    When the weights sum to 1 the ``eps_u`` coefficient vanishes, so ``eps_u`` may be None and the result
    is ``Σ_k w_k eps_k`` (with a single term of weight 1: exactly ``eps_1``); not with a low-passed term.
    """
    if len(eps_k) != len(w_k):
        raise ValueError(f"got {len(eps_k)} predictions but {len(w_k)} weights")
    if lowpass_k is not None and any(s is not None for s in lowpass_k):
        if eps_u is None:
            raise ValueError("eps_u is needed to low-pass a term's difference to it")
        pred = eps_u
        for w, e, s in zip(w_k, eps_k, lowpass_k):
            pred = pred + w * (e - eps_u if s is None else lowpass(e - eps_u, s))
        return pred
    if eps_u is None:
        if not math.isclose(sum(w_k), 1.0, abs_tol=1e-12):
            raise ValueError(f"eps_u is needed unless the weights sum to 1; they sum to {sum(w_k)}")
        if len(eps_k) == 1:
            return eps_k[0]
        pred = w_k[0] * eps_k[0]
        for w, e in zip(w_k[1:], eps_k[1:]):
            pred = pred + w * e
        return pred
    pred = eps_u
    for w, e in zip(w_k, eps_k):
        pred = pred + w * (e - eps_u)
    return pred


def _cat(conds: Sequence[Any]) -> Any:
    if isinstance(conds[0], torch.Tensor):
        return torch.cat(list(conds))
    if isinstance(conds[0], Mapping):
        return {key: _cat([c[key] for c in conds]) for key in conds[0]}
    raise TypeError(f"cannot batch conditions of type {type(conds[0]).__name__}")


def _batchable(cond: Any) -> bool:
    if isinstance(cond, torch.Tensor):
        return True
    return isinstance(cond, Mapping) and all(isinstance(v, torch.Tensor) for v in cond.values())


def _call_model(model: NoisePredictor, x_t: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> Sequence[torch.Tensor]:
    """One model's predictions for each condition: one batched call when the conditions batch."""
    if len(conds) > 1 and all(_batchable(c) for c in conds):
        return model(torch.cat([x_t] * len(conds)), t, _cat(conds)).chunk(len(conds))
    return [model(x_t, t, c) for c in conds]


class MultiGuidance:
    """A guided denoiser: ``(x_t, t, step, num_steps) -> GuidanceOutput`` for a `GuidancePlan`.

    Args:
        models: name -> noise predictor ``(x_t, t, cond) -> prediction``.
        plan: the unconditional branch and the weighted terms.
        prediction_types: optional name -> ``"epsilon" | "v_prediction" | "sample"``. The models a
            step actually uses must agree (see the module docstring).
        run: how a step's model calls (one per model, independent of each other) are run: a function from a list
            of thunks to their results in order. Default: one after the other (`indomain.streams` runs them on
            concurrent CUDA streams).
    """

    def __init__(
        self,
        models: Mapping[str, NoisePredictor],
        plan: GuidancePlan,
        prediction_types: Mapping[str, str] | None = None,
        run: Callable[[list[Callable[[], Any]]], list[Any]] | None = None,
    ) -> None:
        used = {plan.uncond.model, *(term.model for term in plan.terms)}
        missing = sorted(used - set(models))
        if missing:
            raise ValueError(f"guidance plan uses model(s) {missing} but only {sorted(models)} were given")
        if prediction_types:
            types = {name: prediction_types[name] for name in sorted(used) if name in prediction_types}
            if len(set(types.values())) > 1:
                raise ValueError(
                    f"cannot combine predictions of different types {types}: every model in one guidance "
                    "combination must predict the same quantity (retrain or convert the odd one out)"
                )
        self.models = dict(models)
        self.plan = plan
        self.run = run or (lambda calls: [call() for call in calls])

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, step: int = 0, num_steps: int = 1) -> GuidanceOutput:
        """Combine the active terms at sampler ``step`` of ``num_steps``."""
        terms = [term for term in self.plan.terms if term.active(step, num_steps)]
        weights = [float(term.weight) for term in terms]
        # Skip the unconditional pass when it cannot change the result (its coefficient 1 - Σw is 0).
        bands = [term.lowpass for term in terms]
        need_uncond = not terms or any(bands) or not math.isclose(sum(weights), 1.0, abs_tol=1e-12)
        branches = ([self.plan.uncond] if need_uncond else []) + [term.branch for term in terms]
        preds = self._evaluate(branches, x_t, t)
        eps_u = preds[0] if need_uncond else None
        eps_k = preds[1:] if need_uncond else preds
        pred = combine(eps_u, eps_k, weights, bands) if terms else eps_u
        return GuidanceOutput(pred=pred, eps_u=eps_u, eps_k=list(eps_k), terms=terms)

    def _evaluate(self, branches: Sequence[Branch], x_t: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Evaluate every branch, one batched call per model; identical branches are computed once."""
        results: list[torch.Tensor | None] = [None] * len(branches)
        by_model: dict[str, list[int]] = {}
        for i, branch in enumerate(branches):
            by_model.setdefault(branch.model, []).append(i)
        calls, slots = [], []
        for name, idx in by_model.items():
            unique: list[Any] = []  # distinct conditions, by identity
            slot: list[int] = []
            for i in idx:
                cond = branches[i].cond
                j = next((k for k, c in enumerate(unique) if c is cond), None)
                if j is None:
                    unique.append(cond)
                    j = len(unique) - 1
                slot.append(j)
            calls.append(functools.partial(_call_model, self.models[name], x_t, t, unique))
            slots.append((idx, slot))
        for out, (idx, slot) in zip(self.run(calls), slots):
            for i, j in zip(idx, slot):
                results[i] = out[j]
        return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# Presets. Each returns a GuidancePlan; each is an exact special case of the combiner (see tests).


def cfg(guidance_scale: float, cond: Any, null_cond: Any, model: str = PRIOR) -> GuidancePlan:
    """Standard classifier-free guidance: ``eps(x, ∅) + s (eps(x, c) − eps(x, ∅))``, one model."""
    return GuidancePlan(Branch(model, null_cond), (Guidance(model, cond, guidance_scale),))


def rectified(
    guidance_scale: float, cond: Any, null_cond: Any, model: str = "finetuned", prior: str = PRIOR,
    prior_null_cond: Any = None
) -> GuidancePlan:
    """Rectified CFG (Domain Guidance, ICLR 2025; "Unconditional Priors Matter", 2025).

    ``eps_prior(x, ∅) + s (eps_finetuned(x, c) − eps_prior(x, ∅))``: the unconditional prediction comes from
    the frozen prior, the conditional one from the fine-tuned model. ``prior_null_cond`` defaults to ``null_cond``.
    """
    uncond = Branch(prior, null_cond if prior_null_cond is None else prior_null_cond)
    return GuidancePlan(uncond, (Guidance(model, cond, guidance_scale),))


def decoupled(
    domain_guidance_scale: float,
    guidance_scale: float,
    cond: Any,
    null_cond: Any,
    domain: str = DOMAIN,
    prior: str = PRIOR,
    control: str | None = None,
    *,
    domain_cond: Any = None,
    extra_domains: Sequence[Guidance] = (),
    domain_window: tuple[float, float] = (0.0, 1.0),
    control_window: tuple[float, float] = (0.0, 1.0),
) -> GuidancePlan:
    """The paper's guidance-decoupled sampler (Eq. A), and Eq. C with ``extra_domains``: the one place its plan is
    built (the pipelines and score distillation use it).

    ``eps_prior(x, ∅) + w_d (eps_domain(x) − eps_prior(x, ∅)) + w_c (eps_control(x, c) − eps_prior(x, ∅))``.
    The control branch is the prior itself unless ``control`` names another (customised) model. With
    ``cond=None`` this is unconditional in-domain generation (Eq. B). ``domain_cond`` is the domain model's condition
    (None for a null-text model), ``extra_domains`` further domain terms (Eq. C), summed after the domain term.
    """
    terms = [Guidance(domain, domain_cond, domain_guidance_scale, *domain_window)] if domain_guidance_scale != 0 else []
    terms += extra_domains
    if cond is not None:
        terms.append(Guidance(control or prior, cond, guidance_scale, *control_window))
    return GuidancePlan(Branch(prior, null_cond), tuple(terms))


def domain_text(
    domain_guidance_scale: float,
    guidance_scale: float,
    cond: Any,
    null_cond: Any,
    model: str = DOMAIN_TEXT,
    prior: str = PRIOR,
    domain_window: tuple[float, float] = (0.0, 1.0),
    control_window: tuple[float, float] = (0.0, 1.0),
) -> GuidancePlan:
    """Domain-side control: the control term measured by a model that is *in* the domain.

    ``eps_prior(x, ∅) + w_d (eps_dt(x, ∅) − eps_prior(x, ∅)) + w_c (eps_dt(x, c) − eps_dt(x, ∅))``, where ``eps_dt``
    is the null-text domain model with the prior's cross-attention put back (``model``). Eq. A's control term
    ``eps_prior(x, c) − eps_prior(x, ∅)`` is the prior's own answer to the prompt, the prompt's identity *in the prior's
    style*, which pulls against the domain term; here the prompt's direction is measured inside the domain, so
    identity comes with the domain's style. ∅ stays the frozen prior's.

    As the combiner's terms: ``dt(∅)`` with weight w_d on the domain window, ``dt(∅)`` with −w_c and ``dt(c)`` with
    w_c on the control window (the two ``dt(∅)`` share one condition object, so they are computed once). With
    ``cond=None`` it is unconditional in-domain generation through ``eps_dt(x, ∅)``.
    """
    terms = [Guidance(model, null_cond, domain_guidance_scale, *domain_window)]
    if cond is not None:
        terms += [Guidance(model, null_cond, -guidance_scale, *control_window),
                  Guidance(model, cond, guidance_scale, *control_window)]
    return GuidancePlan(Branch(prior, null_cond), tuple(terms))


def domain_text_bands(
    domain_guidance_scale: float,
    guidance_scale: float,
    layout_guidance_scale: float,
    cond: Any,
    null_cond: Any,
    layout_sigma: float = LAYOUT_SIGMA,
    model: str = DOMAIN_TEXT,
    prior: str = PRIOR,
    domain_window: tuple[float, float] = (0.0, 1.0),
    control_window: tuple[float, float] = (0.0, 1.0),
) -> GuidancePlan:
    """Domain-side control with the prompt's term split in two frequency bands.

    ``eps_prior(x, ∅) + w_d (eps_dt(x, ∅) − eps_prior(x, ∅)) + w_l G(q) + w_c (q − G(q))``, with
    ``q = eps_dt(x, c) − eps_dt(x, ∅)`` (:func:`domain_text`'s control term) and ``G`` a Gaussian low-pass of
    standard deviation ``layout_sigma`` times the latent's side (:func:`lowpass`). The prompt's low band carries where
    and how large the concept is drawn and its broad colours; its high band the details that make it recognisable. On
    a domain whose layout differs from the prior's (small drawings), raising w_c in :func:`domain_text` brings the
    prior's layout back with the identity; here w_l keeps the layout near the domain's while w_c sets the identity.
    With ``w_l = w_c`` it is exactly :func:`domain_text`.

    As the combiner's terms: :func:`domain_text`'s, plus ``dt(∅)`` with ``w_c − w_l`` and ``dt(c)`` with
    ``−(w_c − w_l)``, both low-passed (their ∅ parts cancel, leaving ``−(w_c − w_l) G(q)``).
    """
    plan = domain_text(domain_guidance_scale, guidance_scale, cond, null_cond, model, prior, domain_window,
                       control_window)
    k = guidance_scale - layout_guidance_scale
    if cond is None or k == 0:
        return plan
    return GuidancePlan(plan.uncond, plan.terms + (Guidance(model, null_cond, k, *control_window, lowpass=layout_sigma),
                                                   Guidance(model, cond, -k, *control_window, lowpass=layout_sigma)))


def gcfg(conds: Sequence[Any], weights: Sequence[float], null_cond: Any, model: str = PRIOR) -> GuidancePlan:
    """Generalised CFG with N conditions: ``(1 − Σ w_i) eps(x, ∅) + Σ w_i eps(x, c_i)``; w_i < 0 is a negative prompt."""
    if len(conds) != len(weights):
        raise ValueError(f"gcfg got {len(conds)} conditions but {len(weights)} weights")
    return GuidancePlan(Branch(model, null_cond), tuple(Guidance(model, c, w) for c, w in zip(conds, weights)))
