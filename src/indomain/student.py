"""A distilled student: the prior's UNet that gives the in-domain guided prediction of Eq. A in one call.

Exact decoupled guidance costs three rows of UNet work per step (``eps_prior(x, ∅)``, ``eps_domain(x)``,
``eps_prior(x, c)``). Guidance distillation (Meng et al., CVPR 2023) trains one network to output that combination
directly, with the weights as inputs::

    student(x, t, c, w_d, w_c) ≈ eps_prior(x, ∅) + w_d (eps_domain(x) − eps_prior(x, ∅)) + w_c (eps_prior(x, c) − eps_prior(x, ∅))

The student is the prior's own `UNet2DConditionModel` plus a `WeightEmbedding` of ``(w_d, w_c)`` in its
``class_embedding`` slot, which diffusers adds to the timestep embedding (``emb + class_embedding(class_labels)``).
The embedding's last layer starts at zero, so an untrained student is exactly the prior. `indomain.distill` trains
it; `InDomainPipeline.from_pretrained(prior, distilled=DIR)` samples with it (`predict`: one UNet call per step).

A student folder (flat, so a training checkpoint's ``model/`` holds the same files):

- ``config.json`` + ``diffusion_pytorch_model.safetensors``: the whole student UNet in diffusers' layout (loads with
  ``UNet2DConditionModel.from_pretrained``), without the weight embedding; or, for a LoRA student,
  ``student_lora.safetensors``: its adapter weights only (the base weights are the prior's);
- ``weight_embedding.safetensors``: the weight embedding (keys ``class_embedding.*``);
- ``student_config.json``: the embedding's settings, the LoRA settings, the trained weight ranges and the teacher.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from .families import SD, call_denoiser, denoiser_inputs
from .guidance import DOMAIN, PRIOR, MultiGuidance, combine, decoupled
from .outputs import read_json_object, to_json
from .safeload import check_safe, read_safetensors

if TYPE_CHECKING:
    from .pipeline import Conditioning

STUDENT_CONFIG = "student_config.json"
EMBEDDING_FILE = "weight_embedding.safetensors"
LORA_FILE = "student_lora.safetensors"
EMBEDDING_PREFIX = "class_embedding."
FORMAT = "indomain-distilled-student"


class WeightEmbedding(torch.nn.Module):
    """``(w_d, w_c)`` -> a vector added to the UNet's timestep embedding.

    Fourier features of each weight (sin and cos at ``num_frequencies`` log-spaced frequencies, periods from 0.5 to
    ~60 weight units, plus the raw weight) go through a two-layer MLP whose last layer is zero-initialised: the
    untrained embedding is exactly 0, so the student starts as the prior.
    """

    def __init__(self, time_embed_dim: int, num_frequencies: int = 8, hidden_dim: int = 256) -> None:
        super().__init__()
        self.time_embed_dim, self.num_frequencies, self.hidden_dim = time_embed_dim, num_frequencies, hidden_dim
        freqs = 2 * math.pi * torch.logspace(math.log10(1 / 64), math.log10(2.0), num_frequencies)
        self.register_buffer("frequencies", freqs, persistent=False)  # fixed: rebuilt from the config, never saved
        self.linear_1 = torch.nn.Linear(2 * (2 * num_frequencies + 1), hidden_dim)
        self.act = torch.nn.SiLU()
        self.linear_2 = torch.nn.Linear(hidden_dim, time_embed_dim)
        torch.nn.init.zeros_(self.linear_2.weight)  # zero-init: the student equals the prior before training
        torch.nn.init.zeros_(self.linear_2.bias)
        self._last: tuple | None = None  # (weights, parameter versions, output) of the last call without gradients

    def config(self) -> dict[str, int]:
        return {"time_embed_dim": self.time_embed_dim, "num_frequencies": self.num_frequencies, "hidden_dim": self.hidden_dim}

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights``: (B, 2) rows of ``(w_d, w_c)`` -> (B, time_embed_dim).

        Sampling passes one rows tensor to every step of a call (`predict`): without gradients, the output for the
        same tensor and unchanged parameters is reused, so the MLP runs once per call, not once per step. (It runs
        inside the UNet's forward, so offload hooks have put the weights in place.)
        """
        versions = tuple(p._version for p in self.parameters())  # an in-place update (optimizer, load) bumps these
        if self._last is not None and self._last[0] is weights and self._last[1] == versions:
            return self._last[2]
        if weights.ndim != 2 or weights.shape[1] != 2:
            raise ValueError(f"the weight embedding takes (batch, 2) rows of (w_d, w_c), got shape {tuple(weights.shape)}")
        w = weights.to(self.linear_1.weight.dtype)[..., None]  # (B, 2, 1)
        angles = w * self.frequencies.to(w.dtype)  # (B, 2, F)
        features = torch.cat([w, angles.sin(), angles.cos()], -1).flatten(1)  # (B, 2 (2F + 1))
        out = self.linear_2(self.act(self.linear_1(features)))
        self._last = None if torch.is_grad_enabled() else (weights, versions, out)
        return out


@dataclass
class StudentSettings:
    """What ``student_config.json`` records: the trained ranges (sampling refuses weights outside them), the
    embedding and LoRA settings, and the teacher it was distilled from."""

    domain_guidance_scale_range: tuple[float, float]
    guidance_scale_range: tuple[float, float]
    embedding: dict[str, int]
    lora: dict[str, Any] | None = None  # {"r", "lora_alpha", "target_modules"} of a LoRA student
    teacher: dict[str, Any] = field(default_factory=dict)  # the prior, the domain model, the prompt share
    objective: str = "guidance"  # or "consistency": an LCM-style student, sampled with LCMScheduler
    original_inference_steps: int | None = None  # a consistency student's DDIM schedule (LCMScheduler's setting)
    empty_prompt_label: str = "drawn"  # "zero": a call without a prompt gives the embedding w_c = 0 (its training)
    format: str = FORMAT

    @property
    def unconditional_only(self) -> bool:
        """Distilled on empty-prompt rows alone (no prompt file, or a share of 1): it never learned a prompt."""
        return self.teacher.get("num_prompts") == 0 or self.teacher.get("empty_prompt_share", 0.0) >= 1.0

    def check_weights(self, domain_guidance_scale: float, guidance_scale: float) -> None:
        """Refuse weights outside the ranges the student was trained on, naming the weight and the range."""
        for name, value, (lo, hi) in (("domain_guidance_scale", domain_guidance_scale,
                                       self.domain_guidance_scale_range),
                                      ("guidance_scale", guidance_scale, self.guidance_scale_range)):
            if not (lo - 1e-9 <= float(value) <= hi + 1e-9):
                raise ValueError(f"{name}={value} is outside the range [{lo:g}, {hi:g}] this distilled student was "
                                 f"trained on; pick a weight inside it, or distil again with a wider range")


def attach_weight_embedding(unet: UNet2DConditionModel, num_frequencies: int = 8, hidden_dim: int = 256,
                            seed: int = 0) -> WeightEmbedding:
    """Put a zero-initialised `WeightEmbedding` into ``unet``'s class-embedding slot (in place); returns it. Its first
    layer is drawn under ``seed`` (not torch's global RNG), so a run does not depend on what ran before it."""
    if unet.class_embedding is not None or unet.config.get("class_embed_type") is not None:
        raise ValueError("this prior's UNet already has a class embedding; a distilled student needs that slot free")
    if unet.config.get("class_embeddings_concat"):
        raise ValueError("a distilled student adds its weight embedding to the timestep embedding; this UNet concatenates")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embedding = WeightEmbedding(unet.time_embedding.linear_2.out_features, num_frequencies, hidden_dim)
    unet.class_embedding = embedding.to(unet.device, unet.dtype)
    return unet.class_embedding


def weight_rows(domain_guidance_scale: Any, guidance_scale: Any, n: int, like: torch.Tensor) -> torch.Tensor:
    """The student's ``class_labels``: (n, 2) rows of ``(w_d, w_c)`` (each a number or one value per row)."""
    w = [torch.as_tensor(v, dtype=like.dtype, device=like.device).expand(n) for v in (domain_guidance_scale, guidance_scale)]
    return torch.stack(w, 1)


# ----------------------------------------------------------------------------------------------------
# The teacher: Eq. A through the combiner of `indomain.guidance`, one batched call per model


def teacher_prediction(prior: Any, domain: Any, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                       null: torch.Tensor, w_d: torch.Tensor, w_c: torch.Tensor) -> torch.Tensor:
    """Eq. A with one ``(w_d, w_c)`` per row: ``eps_prior(x, ∅) + w_d (eps_domain(x) − eps_prior(x, ∅)) +
    w_c (eps_prior(x, c) − eps_prior(x, ∅))``.

    The branches come from `MultiGuidance` on the `decoupled` preset (the prior's ∅ and c rows in one batched call,
    the domain model in one more); `combine` then applies each row's own weights (it broadcasts (B, 1, 1, 1) weights).
    A row whose prompt is the empty one (``text`` row = ``null`` row) has no control term to speak of.
    """
    def rows(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:  # MultiGuidance stacks x per branch, not t
        return tt.repeat(x.shape[0] // tt.shape[0]) if tt.ndim == 1 else tt

    def teacher(model: Any) -> Any:  # called as the pipeline calls it (`families.call_denoiser`)
        return lambda x, tt, emb: call_denoiser(SD, model, x, rows(x, tt), denoiser_inputs(SD, emb, x.shape[0]))

    models = {PRIOR: teacher(prior), DOMAIN: teacher(domain)}  # the domain branch's emb is None: no text
    # weights 1, 1 only make every branch run; the rows' weights are applied below
    out = MultiGuidance(models, decoupled(1.0, 1.0, text, null))(x_t, t)
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    return combine(out.eps_u, out.eps_k, [w_d.view(shape).to(x_t.dtype), w_c.view(shape).to(x_t.dtype)])


# ----------------------------------------------------------------------------------------------------
# Saving and loading


def _lora_state(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in unet.named_parameters()
            if "lora_" in n and not n.startswith(EMBEDDING_PREFIX)}


def save_student(unet: UNet2DConditionModel, folder: str | os.PathLike, settings: StudentSettings) -> Path:
    """Write a student folder (see the module docstring): safetensors and JSON only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    embedding = unet.class_embedding
    if not isinstance(embedding, WeightEmbedding):
        raise ValueError("not a distilled student: its UNet has no WeightEmbedding (attach_weight_embedding)")
    if settings.lora:
        save_file(_lora_state(unet), folder / LORA_FILE)
    else:
        unet.class_embedding = None  # the UNet file stays a plain UNet2DConditionModel that diffusers loads
        try:
            unet.save_pretrained(folder, safe_serialization=True)
        finally:
            unet.class_embedding = embedding
    save_file({EMBEDDING_PREFIX + k: v.detach().cpu().contiguous() for k, v in embedding.state_dict().items()},
              folder / EMBEDDING_FILE)
    (folder / STUDENT_CONFIG).write_text(to_json(asdict(settings), indent=2))
    return folder


def is_student_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / STUDENT_CONFIG).is_file()


def read_settings(folder: str | os.PathLike) -> StudentSettings:
    """The `StudentSettings` of a student folder, with an error that names what is wrong."""
    folder = Path(folder)
    if not (folder / STUDENT_CONFIG).is_file():
        raise ValueError(f"distilled student {str(folder)!r} is not a student folder (no {STUDENT_CONFIG}; "
                         "`indomain distill` writes one)")
    raw = read_json_object(folder / STUDENT_CONFIG, "a distilled student's settings")
    if raw.get("format") != FORMAT:
        raise ValueError(f"{folder / STUDENT_CONFIG}: not an indomain student (format {raw.get('format')!r})")
    if "domain_scale_range" in raw:  # the key before the rename: students distilled then still load
        raw.setdefault("domain_guidance_scale_range", raw.pop("domain_scale_range"))
    try:
        settings = StudentSettings(**{k: raw[k] for k in ("domain_guidance_scale_range", "guidance_scale_range",
                                                          "embedding")},
                                   lora=raw.get("lora"), teacher=raw.get("teacher", {}),
                                   objective=raw.get("objective", "guidance"),
                                   original_inference_steps=raw.get("original_inference_steps"),
                                   empty_prompt_label=raw.get("empty_prompt_label", "drawn"))
        if settings.empty_prompt_label not in ("zero", "drawn"):
            raise ValueError(f"empty_prompt_label must be zero or drawn, got {settings.empty_prompt_label!r}")
        for name in ("domain_guidance_scale_range", "guidance_scale_range"):
            lo, hi = (float(v) for v in getattr(settings, name))
            setattr(settings, name, (lo, hi))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{folder / STUDENT_CONFIG}: incomplete or malformed ({err})") from None
    return settings


def load_student(folder: str | os.PathLike, prior_unet: UNet2DConditionModel) -> tuple[UNet2DConditionModel, StudentSettings]:
    """The student UNet of ``folder`` (on the prior's device and dtype) and its settings.

    A LoRA student takes its base weights from ``prior_unet``; its adapter is fused into a copy, so sampling pays
    no LoRA overhead. A full student must have the prior's architecture.
    """
    folder = Path(folder)
    settings = read_settings(folder)
    check_safe(folder, allow_pickle=False)
    if settings.lora:
        from peft import LoraConfig

        unet = copy.deepcopy(prior_unet)
        unet.add_adapter(LoraConfig(r=settings.lora["r"], lora_alpha=settings.lora["lora_alpha"],
                                    init_lora_weights="gaussian", target_modules=list(settings.lora["target_modules"])))
        state = read_safetensors(folder / LORA_FILE, "a LoRA student's adapter")[0]
        own = _lora_state(unet)
        if set(state) != set(own):
            missing = sorted(set(own) ^ set(state))
            raise ValueError(f"{folder / LORA_FILE}: its adapter does not fit this prior's UNet (e.g. {missing[0]}); "
                             f"it was distilled from {settings.teacher.get('prior', 'another prior')!r}")
        unet.load_state_dict(state, strict=False)
        unet.fuse_lora()
        unet.unload_lora()
    else:
        if not (folder / "config.json").is_file():
            raise ValueError(f"distilled student {str(folder)!r} has no config.json (the student UNet)")
        from .loading import load_model

        unet = load_model(UNet2DConditionModel, folder, "distilled student")
        for key in ("in_channels", "out_channels", "cross_attention_dim", "block_out_channels", "down_block_types"):
            a, b = prior_unet.config.get(key), unet.config.get(key)
            if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                raise ValueError(f"distilled student {str(folder)!r} does not fit this prior: its {key} is {b!r}, the "
                                 f"prior UNet's is {a!r}")
    embedding = attach_weight_embedding(unet, settings.embedding["num_frequencies"], settings.embedding["hidden_dim"])
    state = read_safetensors(folder / EMBEDDING_FILE, "a student's weight embedding")[0]
    try:
        embedding.load_state_dict({k[len(EMBEDDING_PREFIX):]: v for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(f"{folder / EMBEDDING_FILE}: does not fit the embedding of {STUDENT_CONFIG} ({err})") from None
    return unet.to(prior_unet.device, prior_unet.dtype).eval().requires_grad_(False), settings


# ----------------------------------------------------------------------------------------------------
# Sampling: the pipeline's hooks


def use_student(pipe: Any, student: str | os.PathLike | UNet2DConditionModel | Sequence[str | os.PathLike],
                settings: StudentSettings | None = None, unconditional: UNet2DConditionModel | None = None,
                unconditional_settings: StudentSettings | None = None) -> None:
    """Make ``pipe`` sample with a student (a folder, or a student UNet with its ``settings``): it replaces the
    prior's ``unet``, and each step is one call of it (`predict`).

    A pair of folders (or ``unconditional=`` a second student UNet with its settings) gives each kind of image its own
    student: one distilled with prompts answers images with a prompt, one distilled without (``unconditional_only``)
    answers those without (a batch of both kinds calls each on its own rows). Each image is still one UNet row a
    step; both students are in memory. (One student trained on
    both kinds loses some prompt-less fidelity to the prompted rows' updates: BENCHMARKS.md, "A distilled student".)
    """
    if pipe.family != "sd":
        raise ValueError(f"distilled students are supported on Stable Diffusion 1.x / 2.x priors, not {pipe.family}")
    if isinstance(student, (list, tuple)):
        if len(student) == 1:
            student = student[0]
        elif len(student) == 2 and unconditional is None:
            (student, settings), (unconditional, unconditional_settings) = pair_students(
                [load_student(folder, pipe.unet) for folder in student], [str(folder) for folder in student])
        else:
            raise ValueError(f"distilled= takes one student folder, or two (one distilled with prompts and one "
                             f"without), got {len(student)}")
    if isinstance(student, (str, os.PathLike)):
        student, settings = load_student(student, pipe.unet)
    for unet, its in ((student, settings), (unconditional, unconditional_settings)):
        if unet is not None and (its is None or not isinstance(getattr(unet, "class_embedding", None), WeightEmbedding)):
            raise ValueError("use_student needs a student folder, or a student UNet (with its WeightEmbedding) and its "
                             "settings")
    if unconditional is not None:
        (student, settings), (unconditional, unconditional_settings) = pair_students(
            [(student, settings), (unconditional, unconditional_settings)], ["student", "unconditional"])
    pipe.register_modules(unet=student, unconditional_student=unconditional)
    pipe.student, pipe.unconditional_student_settings = settings, unconditional_settings
    if settings.objective == "consistency":  # its steps are LCM's: the scheduler it was distilled for
        from diffusers import LCMScheduler

        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config,
                                                  original_inference_steps=settings.original_inference_steps)


def pair_students(students: list[tuple[UNet2DConditionModel, StudentSettings]],
                  names: list[str]) -> list[tuple[UNet2DConditionModel, StudentSettings]]:
    """Two students as (the one for prompted calls, the one for prompt-less calls), or an error that names what does
    not pair: exactly one must be unconditional-only, and both must sample with the same scheduler."""
    kinds = [s.unconditional_only for _, s in students]
    if kinds.count(True) != 1:
        what = "both were" if all(kinds) else "neither was"
        raise ValueError(f"two distilled students ({', '.join(names)}) pair only as one distilled with --prompts and "
                         f"one without (an unconditional-only student); {what} distilled without prompts")
    (a, sa), (b, sb) = students
    if (sa.objective, sa.original_inference_steps) != (sb.objective, sb.original_inference_steps):
        raise ValueError(f"distilled students {names[0]!r} and {names[1]!r} sample with different schedulers "
                         f"({sa.objective} and {sb.objective} objectives); pair two of the same --objective")
    return list(students) if kinds[1] else list(reversed(students))


def prompted_rows(prompt: Any, prompt_embeds: Any) -> tuple[bool, ...]:
    """Per prompt of a call, whether it gives a student a prompt (one entry stands for every row): an empty or blank
    string is the empty prompt, i.e. no control term in Eq. A."""
    if prompt_embeds is not None:
        return (True,)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    return tuple(isinstance(p, str) and bool(p.strip()) for p in prompts) or (False,)


def _for_call(pipe: Any, prompted: bool) -> tuple[Any, StudentSettings]:
    """The student (UNet, settings) that answers a row with or without a prompt."""
    if not prompted and getattr(pipe, "unconditional_student", None) is not None:
        return pipe.unconditional_student, pipe.unconditional_student_settings
    return pipe.unet, pipe.student


def check_call(pipe: Any, domain_guidance_scale: float, guidance_scale: float, negative_prompt: Any,
               weighted_prompts: Any, rows: Sequence[bool] = (False,)) -> None:
    """A call ``pipe``'s students can answer: weights inside the trained ranges of each student a row goes to, no
    term they were not distilled with, and no prompt for a student distilled without any."""
    if any(rows) and _for_call(pipe, True)[1].unconditional_only:
        raise ValueError("this distilled student was trained without prompts (unconditional only: no --prompts, or "
                         "--empty-prompt-share 1); sample it without a prompt, or use a student distilled with --prompts")
    if negative_prompt is not None:
        raise ValueError("a distilled student has the empty prompt's ∅ built in; negative_prompt is not supported")
    if weighted_prompts:
        raise ValueError("a distilled student was distilled without extra weighted prompts; weighted_prompts is not supported")
    for prompted in set(rows):
        _for_call(pipe, prompted)[1].check_weights(domain_guidance_scale, guidance_scale)


def predict(pipe: Any, x_in: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int, num_steps: int) -> torch.Tensor:
    """The student's prediction at one step: ONE UNet call with the prompt (the empty prompt without one), the
    call's weights as the embedding's input, and the ControlNet / adapter residuals of the step, if any.

    With a pair, a batch that mixes rows with and without a prompt sends each row to the student of its kind: one
    call of each, so still one UNet row per image and step."""
    n = x_in.shape[0]
    per_prompt = cond.options.student_rows if cond.prompt_embeds is not None else (False,)
    rows = torch.tensor(per_prompt, device=x_in.device).repeat_interleave(n // len(per_prompt) if len(per_prompt) > 1 else n)
    # The weights are constant in a call unless a callback changes them: checked and made rows once, and the same
    # rows tensor at every step lets each embedding compute once per call (`WeightEmbedding.forward`).
    key = (pipe.domain_guidance_scale, pipe.guidance_scale, n, per_prompt)
    if cond.options.student_weights is None or cond.options.student_weights[0] != key:
        w_c = torch.full((n,), float(pipe.guidance_scale), dtype=x_in.dtype, device=x_in.device)
        students = {}
        for prompted in set(per_prompt):
            model, settings = _for_call(pipe, prompted)
            settings.check_weights(pipe.domain_guidance_scale, pipe.guidance_scale)
            if not prompted and settings.empty_prompt_label == "zero":
                w_c[rows == prompted] = 0.0  # without a prompt Eq. A has no control term: learned with w_c = 0
            students[prompted] = model
        labels = weight_rows(pipe.domain_guidance_scale, w_c, n, x_in)
        if len({id(model) for model in students.values()}) == 1:  # one student answers every row: one call
            groups = [(next(iter(students.values())), None, labels)]
        else:  # a pair, and rows of both kinds: each student answers its own rows
            groups = [(students[p], idx, labels[idx]) for p in (True, False) for idx in [torch.nonzero(rows == p).flatten()]]
        cond.options.student_weights = (key, groups)
    groups = cond.options.student_weights[1]
    text = cond.prompt_embeds if cond.prompt_embeds is not None else cond.negative_prompt_embeds
    spatial = cond.spatial if cond.spatial is not None and cond.spatial.active(step, num_steps) else None
    extra = spatial.residuals(x_in, t, text) if spatial is not None else {}
    if len(groups) == 1:
        model, _, weights = groups[0]
        return call_student(model, x_in, t, text, weights, extra, pipe.cross_attention_kwargs)
    out = torch.empty_like(x_in)
    for model, idx, weights in groups:
        tt = t[idx] if t.ndim else t
        out[idx] = call_student(model, x_in[idx], tt, text[idx], weights, _take_rows(extra, idx),
                                pipe.cross_attention_kwargs).to(out.dtype)
    return out


def _take_rows(extra: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    """The UNet keyword arguments (ControlNet / adapter residuals) of the rows ``idx``."""
    return {k: [r[idx] for r in v] if isinstance(v, (list, tuple)) else v[idx] for k, v in extra.items()}


def call_student(model: Any, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, weights: torch.Tensor,
                 extra: dict | None = None, attention_kwargs: dict | None = None) -> torch.Tensor:
    """One call of a student UNet, in sampling and in distillation: the prompt's embeddings and each row's
    ``(w_d, w_c)`` (`weight_rows`) as its ``class_labels``; otherwise the call of any SD UNet
    (`families.call_denoiser`)."""
    inputs = {**denoiser_inputs(SD, text, x.shape[0]), "class_labels": weights}
    return call_denoiser(SD, model, x, t, inputs, extra, attention_kwargs)
