"""`InDomainPipeline`: guidance-decoupled in-domain sampling on a Stable Diffusion prior.

Per step (Cao et al. 2025, Eq. A, with extra weighted prompts as in Eq. C)::

    eps = eps_prior(x, ∅) + w_d (eps_domain(x) - eps_prior(x, ∅))
                          + w_c (eps_prior(x, c) - eps_prior(x, ∅)) + Σ_i w_i (eps_prior(x, c_i) - eps_prior(x, ∅))

All prior branches of a step run in one batched UNet call and the domain branch in one more (with a LoRA domain model
and ``share_base=True``, in the same call: `indomain.shared_base`).

The family-specific parts (prompt encoding, latent scaling) are hooks that `InDomainXLPipeline` and
`InDomainSD3Pipeline` override; the model call is `indomain.families`' (`denoiser_inputs`, `call_denoiser`), which
training uses too. The loop, the combination and the checks are shared.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.embeddings import ImageProjection
from diffusers.loaders import IPAdapterMixin, StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.distributed_utils import is_torch_dist_rank_zero
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .console import progress
from .control import (
    SpatialControl, as_multi_controlnet, check_control_compatible, controlnet_scales, default_size,
    prepare_adapter_state, prepare_controlnet_images,
)
from .families import FAMILIES, IP, TEXT, call_denoiser, denoiser_inputs, detect_family
from .guidance import (DEFAULT_LAYOUT_GUIDANCE_SCALE, DOMAIN, DOMAIN_TEXT, LAYOUT_SIGMA, PRIOR, Guidance, GuidancePlan,
                       MultiGuidance, decoupled, domain_text, domain_text_bands)
from .loading import is_lora_folder, load_domain_model, resolve_domain_path
from .numerics import require_finite
from .nulltext import (
    STRUCTURE_KEYS, DomainModels, NullTextTransformer, NullTextUNet, check_compatible, prior_text_pathway,
)
from .safeload import check_prior
from .shared_base import ROWS, SharedBaseDomain
from .streams import run_on_streams
from .student import check_call as student_check_call
from .student import predict as student_predict
from .student import prompted_rows as student_prompted_rows
from .student import use_student
from .shared_base import flags as domain_flags


@dataclass
class InDomainPipelineOutput(BaseOutput):
    """``images``: a list of PIL images, a numpy array (N, H, W, 3), a tensor, or latents."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class InDomainPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin, IPAdapterMixin):
    """In-domain generation with a frozen prior plus a null-text domain model (Cao et al., CVPR 2025).

    Components: ``unet`` is the frozen prior (LoRA and textual-inversion loaders attach to it),
    ``domain_unet`` the `NullTextUNet`; ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` as in
    `StableDiffusionPipeline`; optional spatial control: ``controlnet`` (one, a list or a `MultiControlNetModel`)
    and ``adapter`` (`T2IAdapter` or `MultiAdapter`); ``extra_domains`` (`DomainModels`: more domain models, one
    domain term each, weighted by the call's ``domain_weights``); ``control_unet`` (another UNet of the prior's
    architecture, e.g. a community fine-tune, that predicts the control prompt's term while ∅ stays the prior's). With ``domain_guidance_scale=0`` it is plain Stable Diffusion
    CFG (with a ControlNet or adapter: `StableDiffusionControlNetPipeline` / `StableDiffusionAdapterPipeline`).
    """

    model_cpu_offload_seq = ("text_encoder->image_encoder->adapter->controlnet->unet->unconditional_student->control_unet->"
                             "domain_unet->extra_domains->vae")
    _optional_components = ["domain_unet", "controlnet", "adapter", "extra_domains", "control_unet", "image_encoder",
                            "feature_extractor", "unconditional_student"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    domain_component = "domain_unet"  # the domain model's component name (SD3: "domain_transformer")
    family = "sd"  # the model family this class opens (indomain.families)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: PreTrainedModel,  # CLIP for Stable Diffusion; any transformers text encoder a prior ships
        tokenizer: PreTrainedTokenizerBase,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        domain_unet: NullTextUNet | UNet2DConditionModel | None = None,
        controlnet: Any = None,  # ControlNetModel, MultiControlNetModel or a list of ControlNetModels
        adapter: Any = None,  # T2IAdapter or MultiAdapter
        extra_domains: DomainModels | Sequence[NullTextUNet] | None = None,
        control_unet: UNet2DConditionModel | None = None,
        image_encoder: Any = None,  # CLIPVisionModelWithProjection, for IP-Adapter (load_ip_adapter sets it)
        feature_extractor: Any = None,  # CLIPImageProcessor, for IP-Adapter
        unconditional_student: UNet2DConditionModel | None = None,  # a distilled student for prompt-less calls
    ) -> None:
        super().__init__()
        if domain_unet is not None:
            check_compatible(unet, domain_unet, scheduler.config.prediction_type)
        extra_domains = checked_extra_domains(unet, extra_domains, scheduler.config.prediction_type)
        check_control_unet(unet, control_unet)
        controlnet = as_multi_controlnet(controlnet)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        check_control_compatible(unet, controlnet, adapter, self.vae_scale_factor)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, domain_unet=domain_unet,
            controlnet=controlnet, adapter=adapter, extra_domains=extra_domains, control_unet=control_unet,
            image_encoder=image_encoder, feature_extractor=feature_extractor, unconditional_student=unconditional_student,
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        domain_unet: str | os.PathLike | NullTextUNet | None = None,
        allow_pickle: bool = False,
        share_base: bool = False,
        distilled: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        **kwargs: Any,
    ) -> "InDomainPipeline":
        """Load the prior (hub id or local dir) and, optionally, a domain model (folder or instance).

        ``distilled=DIR`` samples with a student of `indomain distill` instead (`indomain.student`): it replaces the
        prior's ``unet``, needs no domain model, and each step is one UNet call. ``distilled=[DIR, DIR]`` takes two:
        one distilled with prompts for calls with a prompt and one distilled without for calls without (`use_student`).

        ``share_base=True`` serves an adapter-only (LoRA) domain folder from the prior's UNet (`share_domain_base`):
        one UNet in memory and one call per step.

        Weights load from safetensors; pickle checkpoints need ``allow_pickle=True`` (then
        ``weights_only`` loading). Remote code is never trusted.
        """
        if kwargs.pop("trust_remote_code", False):
            raise ValueError("trust_remote_code is not supported: indomain never runs code shipped with a model")
        check_prior(pretrained_model_name_or_path, allow_pickle)
        if Path(pretrained_model_name_or_path).expanduser().is_file():  # a single-file checkpoint (+ config=DIR)
            return cls._from_single_file(pretrained_model_name_or_path, domain_unet, allow_pickle, share_base, **kwargs)
        if Path(pretrained_model_name_or_path).expanduser().is_dir():
            found = detect_family(pretrained_model_name_or_path)
            if found.name != cls.family:
                raise ValueError(f"{str(pretrained_model_name_or_path)!r} is a {found.title} prior; {cls.__name__} opens "
                                 f"{FAMILIES[cls.family].title} priors. Use InDomainAutoPipeline.from_pretrained, which "
                                 "picks the pipeline of the prior's family")
        kwargs.setdefault("use_safetensors", None if allow_pickle else True)
        # `dtype` (diffusers >= 0.36) or the older `torch_dtype`; it reaches every component, the domain model too
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if distilled is not None:  # a distilled student: Eq. A in one call per step (indomain.student)
            if domain_unet is not None or share_base:
                raise ValueError("distilled= replaces the domain model and the prior's guidance; pass no domain_unet")
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            use_student(pipe, distilled)
            return pipe
        if isinstance(domain_unet, (str, os.PathLike)):
            domain_unet = resolve_domain_path(domain_unet, **{k: kwargs[k] for k in ("local_files_only", "token", "revision", "cache_dir") if k in kwargs})
        if share_base:
            if not isinstance(domain_unet, (str, os.PathLike)) or not is_lora_folder(domain_unet):
                raise ValueError("share_base=True needs domain_unet= an adapter-only (LoRA) domain model folder")
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            pipe.share_domain_base(domain_unet)
            return pipe
        if isinstance(domain_unet, (str, os.PathLike)) and is_lora_folder(domain_unet):
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            domain = load_domain_model(domain_unet, pipe.denoiser)
            check_compatible(pipe.denoiser, domain, pipe.prediction_type)
            pipe.register_modules(**{cls.domain_component: domain})
            return pipe
        if isinstance(domain_unet, (str, os.PathLike)):
            domain_unet = load_domain_model(domain_unet, allow_pickle=allow_pickle, dtype=dtype)
        elif domain_unet is not None and dtype is not None and domain_unet.dtype != dtype:
            domain_unet = domain_unet.to(dtype)
        if domain_unet is not None:
            kwargs[cls.domain_component] = domain_unet
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_single_file(cls, file: str | os.PathLike, domain_unet: Any, allow_pickle: bool, share_base: bool,
                          **kwargs: Any) -> "InDomainPipeline":
        """`from_pretrained` of a single-file ``.safetensors`` prior (`indomain.loading.load_single_file_prior`)."""
        from .loading import load_single_file_prior

        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        hub = {k: kwargs.pop(k) for k in ("local_files_only", "token", "revision", "cache_dir") if k in kwargs}
        components, family = load_single_file_prior(file, config=kwargs.pop("config", None), dtype=dtype, **hub)
        if family.name != cls.family:
            raise ValueError(f"{str(file)!r} is a {family.title} checkpoint; {cls.__name__} opens "
                             f"{FAMILIES[cls.family].title} priors. Use InDomainAutoPipeline.from_pretrained")
        params = inspect.signature(cls.__init__).parameters
        given = {k: v for k, v in kwargs.items() if k in params}  # components passed in (controlnet=, ...)
        pipe = cls(**{k: v for k, v in components.items() if k in params and k not in given}, **given)
        if isinstance(domain_unet, (str, os.PathLike)):
            domain_unet = resolve_domain_path(domain_unet)
            if share_base:
                pipe.share_domain_base(domain_unet)
                return pipe
            domain_unet = load_domain_model(domain_unet, pipe.denoiser, allow_pickle=allow_pickle, dtype=dtype)
        if domain_unet is not None:
            domain_unet = domain_unet.to(pipe.denoiser.device, pipe.denoiser.dtype)
            check_compatible(pipe.denoiser, domain_unet, pipe.prediction_type)
            pipe.register_modules(**{cls.domain_component: domain_unet})
        return pipe

    def share_domain_base(self, folder: str | os.PathLike) -> None:
        """Serve an adapter-only (LoRA) domain model from the prior's own UNet: its adapter and constants go onto
        ``unet``, and each step runs every branch, the domain's too, in one batched call (`indomain.shared_base`).
        Replaces ``domain_unet``. Same images as the separate model up to float round-off (tested)."""
        if self.family != "sd":
            raise ValueError("a shared-base domain model is supported on Stable Diffusion 1.x / 2.x priors only")
        self.shared_domain = SharedBaseDomain(self.unet, folder)
        self.register_modules(**{self.domain_component: None})

    def denoisers(self) -> list[torch.nn.Module]:
        """Every model a sampling step calls: the prior's denoiser, the domain model, the extra domains' models and
        the control model (spatial-control models excluded)."""
        extra = getattr(self, "extra_domains", None)
        found = [self.denoiser, self.domain_model, getattr(self, "control_unet", None), *(extra.models if extra else [])]
        return [m for m in found if m is not None]

    def set_memory_format(self, memory_format: torch.memory_format = torch.channels_last) -> None:
        """Hold every denoiser's weights in ``memory_format`` (channels_last: the layout GPU tensor cores prefer);
        ``pipe.unet.to(memory_format=...)`` alone would leave the domain models as they were."""
        for model in self.denoisers():
            model.to(memory_format=memory_format)

    def compile_denoisers(self, **kwargs: Any) -> None:
        """``torch.compile`` every denoiser in place (``nn.Module.compile(**kwargs)``, e.g. ``mode="max-autotune"``);
        ``pipe.unet.compile()`` alone compiles the prior only."""
        for model in self.denoisers():
            model.compile(**kwargs)

    def enable_concurrent_branches(self) -> None:
        """Run each step's prior and domain calls on concurrent CUDA streams (`indomain.streams`): they overlap where
        one call does not fill the GPU, as at batch 1. Off CUDA the calls run in order: the same images."""
        self._branch_runner = run_on_streams

    def disable_concurrent_branches(self) -> None:
        """One model call after the other (the default)."""
        self._branch_runner = None

    def set_extra_domains(self, models: Sequence[NullTextUNet], weights: Sequence[float] | None = None) -> None:
        """Attach extra domain models (checked against the prior) with their default weights; ``[]`` removes them."""
        extras = DomainModels.from_models(list(models), weights) if models else None
        self.register_modules(extra_domains=checked_extra_domains(self.denoiser, extras, self.prediction_type))

    def progress_bar(self, iterable: Any = None, total: int | None = None, desc: str = "sampling") -> Any:
        """The sampler's bar, labelled ``desc`` and hidden by ``indomain --quiet``; ``set_progress_bar_config``
        still sets any tqdm option (``disable=True``, another ``desc``), as in diffusers."""
        config = {"desc": desc, "disable": not is_torch_dist_rank_zero(), **getattr(self, "_progress_bar_config", {})}
        return progress(iterable, total=total, **config)

    # -- the family hooks: what an SDXL or SD3 pipeline overrides (see indomain.families) --------------------

    @property
    def denoiser(self) -> Any:
        """The prior's noise predictor (``unet``; an SD3 pipeline's ``transformer``)."""
        return self.unet

    @property
    def domain_model(self) -> Any:
        """The domain model (``domain_unet``; an SD3 pipeline's ``domain_transformer``), or None."""
        return getattr(self, self.domain_component, None)

    @property
    def prediction_type(self) -> str:
        """What the prior predicts: ``epsilon`` or ``v_prediction`` (SD3: ``flow``, the velocity)."""
        return self.scheduler.config.prediction_type

    def encode_negative(self, negative_prompt: str | list[str] | None, batch_size: int, device: torch.device) -> Any:
        """The unconditional branch's text: the negative prompt, else the empty prompt."""
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * batch_size
        return self.encode_text(negatives, device)

    def model_inputs(self, emb: Any, batch: int) -> dict:
        """The denoiser's keyword inputs for one branch batch of ``batch`` rows (`families.denoiser_inputs`): the
        text (a tensor, or a dict with ``text`` and, with an IP-Adapter, ``ip0``, ``ip1``, ...); ``emb`` None for a
        domain model."""
        return denoiser_inputs(FAMILIES[self.family], emb, batch)

    def call_denoiser(self, model: Any, x: torch.Tensor, t: torch.Tensor, inputs: dict, extra: dict,
                      attention_kwargs: dict | None = None) -> torch.Tensor:
        """One denoiser call (`families.call_denoiser`): ``inputs`` from `model_inputs`, ``extra`` the ControlNet /
        adapter residuals, ``attention_kwargs`` the call's ``cross_attention_kwargs`` (the prior's branches only)."""
        return call_denoiser(FAMILIES[self.family], model, x, t, inputs, extra, attention_kwargs)

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the VAE's own scale, ready to decode."""
        return latents / self.vae.config.scaling_factor

    def scheduler_kwargs(self, height: int, width: int) -> dict:
        """Extra arguments of the scheduler's ``set_timesteps`` (SD3: the resolution-dependent shift ``mu``)."""
        return {}

    # -- the properties diffusers' callbacks and users read, as in StableDiffusionPipeline ----------------

    @property
    def guidance_scale(self) -> float:
        """The control weight w_c of the current call; a callback may change it (``pipe._guidance_scale``)."""
        return self._guidance_scale

    @property
    def domain_guidance_scale(self) -> float:
        """The domain weight w_d of the current call; a callback may change it (``pipe._domain_guidance_scale``)."""
        return self._domain_guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. from a callback) to skip the remaining steps."""
        return self._interrupt

    # ------------------------------------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str], device: torch.device, clip_skip: int | None = None) -> torch.Tensor:
        """Text embeddings (len(prompts), L, D) of the prior's text encoder, as Stable Diffusion computes them.

        ``clip_skip`` takes the output of that many layers before the last (then the final LayerNorm), as
        `StableDiffusionPipeline`; it needs a CLIP text encoder.
        """
        prompts = self.maybe_convert_prompt(list(prompts), self.tokenizer)
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = ids.attention_mask.to(device) if use_mask else None
        if clip_skip is None:
            emb = self.text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]
        else:
            # transformers 5 flattened CLIPTextModel (no .text_model); 4.x keeps it one level down
            final_norm = getattr(getattr(self.text_encoder, "text_model", self.text_encoder), "final_layer_norm", None)
            if final_norm is None:
                raise ValueError(f"clip_skip needs a CLIP text encoder; this prior's is a {type(self.text_encoder).__name__}")
            hidden = self.text_encoder(ids.input_ids.to(device), attention_mask=mask, output_hidden_states=True).hidden_states
            emb = final_norm(hidden[-(clip_skip + 1)])
        return emb.to(dtype=self.text_encoder.dtype, device=device)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`StableDiffusionPipeline.encode_prompt`'s signature and result: ``(prompt_embeds, negative_prompt_embeds)``,
        each repeated ``num_images_per_prompt`` times (the negative one None without classifier-free guidance)."""
        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

        scaled = lora_scale is not None and USE_PEFT_BACKEND and self.text_encoder is not None
        if scaled:
            scale_lora_layers(self.text_encoder, lora_scale)
        try:
            if prompt_embeds is None:
                prompt_embeds = self.encode_text([prompt] if isinstance(prompt, str) else prompt, device, clip_skip)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                n = prompt_embeds.shape[0]
                negatives = [negative_prompt or ""] * n if not isinstance(negative_prompt, list) else negative_prompt
                negative_prompt_embeds = self.encode_text(negatives, device)
        finally:
            if scaled:
                unscale_lora_layers(self.text_encoder, lora_scale)
        repeat = lambda e: None if e is None else e.repeat_interleave(num_images_per_prompt, dim=0)  # noqa: E731
        return repeat(prompt_embeds), repeat(negative_prompt_embeds if do_classifier_free_guidance else None)

    def check_domain_weight(self, domain_guidance_scale: float) -> None:
        """The one check that a domain weight w_d != 0 has a domain model to weigh (sampling, editing, SDS)."""
        if domain_guidance_scale != 0 and self.domain_model is None and getattr(self, "shared_domain", None) is None:
            raise ValueError(
                f"domain_guidance_scale={domain_guidance_scale} needs a domain model: pass domain_unet= to from_pretrained, "
                "or set domain_guidance_scale=0 for the plain prior"
            )

    def check_inputs(
        self,
        prompt: Any,
        negative_prompt: Any,
        height: int,
        width: int,
        guidance_scale: float,
        domain_guidance_scale: float,
        weighted_prompts: Sequence[tuple[str, float]] | None,
        prompt_embeds: torch.Tensor | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> None:
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be divisible by {self.vae_scale_factor}, got {height}x{width}")
        for name, w in [("guidance_scale", guidance_scale), ("domain_guidance_scale", domain_guidance_scale)] + [
            (f"weighted_prompts[{i}] weight", w) for i, (_, w) in enumerate(weighted_prompts or [])
        ]:
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"{name} must be a finite number, got {w!r}")
        if getattr(self, "student", None) is not None:
            student_check_call(self, domain_guidance_scale, guidance_scale, negative_prompt, weighted_prompts,
                               rows=student_prompted_rows(prompt, prompt_embeds))
        else:
            self.check_domain_weight(domain_guidance_scale)
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
        if isinstance(negative_prompt, list) and isinstance(prompt, list) and len(negative_prompt) != len(prompt):
            raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {len(prompt)}")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")

    def prepare_latents(
        self, batch_size: int, height: int, width: int, dtype: torch.dtype, device: torch.device, generator: Any, latents: torch.Tensor | None
    ) -> torch.Tensor:
        # Same draw as StableDiffusionPipeline.prepare_latents (diffusers 0.42), so seeds reproduce its images.
        shape = (batch_size, self.denoiser.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for an effective batch size of {batch_size}")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=dtype)
        return latents * getattr(self.scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers have none

    def _step_kwargs(self, generator: Any, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 2.5,
        domain_guidance_scale: float = 2.5,
        weighted_prompts: Sequence[tuple[str, float]] | None = None,
        domain_prompt: str | list[str] | None = None,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        domain_guidance_start: float = 0.0,
        domain_guidance_end: float = 1.0,
        domain_guidance_every: int = 1,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        image: Any = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        adapter_conditioning_scale: float | list[float] = 1.0,
        controlnet_to_domain: bool = True,
        guess_mode: bool = False,
        domain_weights: Sequence[float] | None = None,
        lora_in_uncond: bool = True,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        guidance_form: str = "decoupled",
        layout_guidance_scale: float = DEFAULT_LAYOUT_GUIDANCE_SCALE,
        layout_sigma: float = LAYOUT_SIGMA,
    ) -> InDomainPipelineOutput | tuple:
        """Generate in-domain images.

        Args:
            prompt: control prompt(s); one image batch entry per prompt. None gives unconditional
                in-domain generation (the prior's unconditional prediction plus domain guidance).
            negative_prompt: replaces the empty prompt in the prior's unconditional branch, as in SD.
            guidance_scale: control weight w_c on ``prompt`` (official default 2.5). Unlike
                `StableDiffusionPipeline`, w_c <= 1 does not switch to the conditional prediction alone:
                the formula ``eps_u + w_c (eps_c - eps_u)`` holds for every value (w_c = 1 gives ``eps_c``).
            domain_guidance_scale: domain weight w_d (official default 2.5); 0 gives plain SD CFG.
            weighted_prompts: extra ``(text, weight)`` control terms shared by the whole batch (GCFG);
                a negative weight pushes away from the text.
            domain_prompt: text for a text-conditioned domain model (a conventional fine-tune, which
                gives rectified CFG); defaults to ``prompt``. A `NullTextUNet` ignores it.
            control_guidance_start/end, domain_guidance_start/end: the fraction of the trajectory in
                which the control terms / the domain term are active.
            domain_guidance_every: compute the domain model every this many steps and reuse its difference to ∅
                (``eps_domain − eps_u``) in the steps between: an opt-in approximation that skips domain calls (its
                speed and quality cost: BENCHMARKS.md, "Sampling speed"). 1 (the default) is exact.
            guidance_rescale: as in SD (Lin et al. 2023, §3.4), the combined prediction is rescaled towards
                the standard deviation of the control prompt's prior prediction ``eps_prior(x, c)`` (SD's
                ``noise_pred_text``); without a prompt, towards the domain prediction.
            callback_on_step_end: a function or a diffusers `PipelineCallback`, called after every step with
                the tensors named in ``callback_on_step_end_tensor_inputs``: ``latents``, ``prompt_embeds``
                (the control prompt's embeddings, one row per image) and ``negative_prompt_embeds`` (the
                unconditional branch's). Returned tensors replace them; a callback may also set
                ``pipe._guidance_scale``, ``pipe._domain_guidance_scale`` or ``pipe._interrupt``. diffusers'
                ``SDCFGCutoffCallback`` thus sets w_c = 0 after its cutoff: the control term stops (SD instead
                continues with the conditional prediction alone).
            image: the control image(s) of the ``controlnet`` and/or ``adapter`` (PIL, numpy or a tensor in [0, 1];
                one, or one per prompt; a list with one entry per net for a MultiControlNet / MultiAdapter). It
                sets the default height and width. See `prepare_spatial_control`.
            controlnet_conditioning_scale, adapter_conditioning_scale: as in diffusers (a list: one per net).
            controlnet_to_domain: send the ControlNet / adapter residuals to the domain branch too (default). With
                the residuals on the prior's branches only, Eq. C gives them a net weight of 1 − w_d (−1.5 at the
                official 2.5) and the image moves away from the control (the emoji world's measurement:
                docs/RESULTS.md, "Spatial control"). False sends them to the prior's only.
            guess_mode: only False is supported.
            domain_weights: one weight per model of ``extra_domains`` (default: the weights stored with them); each adds
                ``w_j (eps_domain_j(x) − eps_u)`` within the domain window. Independent of ``domain_guidance_scale``.
            ip_adapter_image, ip_adapter_image_embeds: the image prompt of IP-Adapters loaded on the prior with
                ``load_ip_adapter`` (one image, or one per IP-Adapter), or its embeddings in diffusers' CFG layout (one
                tensor per IP-Adapter, the negative rows stacked before the positive ones). The prior's branches with a
                prompt (control prompt, weighted prompts) get the image embeddings, ∅ the negative ones, as in
                `StableDiffusionPipeline`; the domain branch gets none (a `NullTextUNet` has no cross-attention to them).
            lora_in_uncond: with a LoRA loaded on the prior (``load_lora_weights``), whether the unconditional branch
                ∅ comes from the LoRA'd prior (True, the default, as diffusers: ``eps_lora(x, ∅) + w_c (eps_lora(x, c) −
                eps_lora(x, ∅)) + ...``) or from the pristine prior (False: ``eps_prior(x, ∅) + w_c (eps_lora(x, c) −
                eps_prior(x, ∅)) + ...``, the UNet's adapters disabled for that branch, which then runs in its own call;
                the text encoder, if the LoRA touches it, stays LoRA'd).
            control_guidance_start/end also gate the ControlNet and adapter residuals (diffusers' window rule).
            guidance_form: which model measures the control prompt's term (:data:`GUIDANCE_FORMS`). ``"decoupled"``
                (the paper's Eq. A): the prior, ``w_c (eps_prior(x, c) − eps_prior(x, ∅))``. ``"domain-text"``
                the domain model with the prior's cross-attention put back (`prior_text_pathway`),
                ``w_d (eps_dt(x, ∅) − eps_prior(x, ∅)) + w_c (eps_dt(x, c) − eps_dt(x, ∅))``, so the prompt's identity
                comes in the domain's style (`indomain.guidance.domain_text`; needs a `NullTextUNet` domain model).
                ``"domain-text-bands"``: the same with the prompt's term split in two bands
                (`indomain.guidance.domain_text_bands`): its low band (layout, broad colours) weighted
                ``layout_guidance_scale``, the rest ``guidance_scale``.
            layout_guidance_scale, layout_sigma: the weight of the prompt term's low band, and the band's edge (a
                Gaussian's standard deviation as a fraction of the latent's side); ``"domain-text-bands"`` only.
            Other arguments as in `StableDiffusionPipeline.__call__`.
        """
        # 1. Check inputs; record the weights a callback may change
        if image is not None and (height is None or width is None):
            h, w = default_size(image, self.control_size_multiple())
            height, width = height or h, width or w
        height = height or self.denoiser.config.sample_size * self.vae_scale_factor
        width = width or self.denoiser.config.sample_size * self.vae_scale_factor
        callback_on_step_end_tensor_inputs, options = self.begin_call(
            prompt, negative_prompt, height, width, guidance_scale, domain_guidance_scale, weighted_prompts,
            prompt_embeds, callback_on_step_end, callback_on_step_end_tensor_inputs, guidance_rescale, clip_skip,
            cross_attention_kwargs, domain_weights=domain_weights, lora_in_uncond=lora_in_uncond,
            domain_guidance_every=domain_guidance_every, guidance_form=guidance_form,
            layout=(layout_guidance_scale, layout_sigma),
        )

        # 2-3. Encode prompts: one row per image, prompts repeated num_images_per_prompt times as SD does
        device = self._execution_device
        cond = self.prepare_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, domain_prompt, weighted_prompts,
            num_images_per_prompt, clip_skip, device,
            control_window=(control_guidance_start, control_guidance_end),
            domain_window=(domain_guidance_start, domain_guidance_end),
            # a distilled student has ∅ built in: with a prompt, it never reads the empty prompt's embeddings
            unconditional=getattr(self, "student", None) is None or (prompt is None and prompt_embeds is None),
        )
        cond.options = options
        options.student_rows = student_prompted_rows(prompt, prompt_embeds)
        cond.ip_adapter = self.prepare_ip_adapter(ip_adapter_image, ip_adapter_image_embeds, cond, device)
        cond.spatial = self.prepare_spatial_control(
            image, height, width, cond, num_images_per_prompt, controlnet_conditioning_scale, adapter_conditioning_scale,
            controlnet_to_domain, guess_mode, (control_guidance_start, control_guidance_end), device,
        )

        # 4. Prepare timesteps (custom `timesteps` or `sigmas` through diffusers' retrieve_timesteps)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas,
                                                            **self.scheduler_kwargs(height, width))

        # 5. Prepare latent variables
        latents = self.prepare_latents(cond.n, height, width, cond.dtype, device, generator,
                                       latents)

        # 6. Denoising loop: eps = eps_u + Σ_k w_k (eps_k - eps_u), then the scheduler's update
        latents = self.denoise(latents, timesteps, cond, self._step_kwargs(generator, eta), callback_on_step_end,
                               callback_on_step_end_tensor_inputs)

        # 7. Decode
        images = self.latents_to_images(latents, output_type, generator)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return InDomainPipelineOutput(images=images)

    # -- the sampling core, shared by every pipeline built on this one (img2img, inversion, inpainting) ----------

    def begin_call(
        self, prompt: Any, negative_prompt: Any, height: int, width: int, guidance_scale: float,
        domain_guidance_scale: float, weighted_prompts: Any, prompt_embeds: torch.Tensor | None, callback: Any,
        tensor_inputs: Sequence[str], guidance_rescale: float, clip_skip: int | None, cross_attention_kwargs: dict | None,
        domain_weights: Sequence[float] | None = None, lora_in_uncond: bool = True, domain_guidance_every: int = 1,
        guidance_form: str = "decoupled", layout: tuple[float, float] = (DEFAULT_LAYOUT_GUIDANCE_SCALE, LAYOUT_SIGMA),
    ) -> tuple[Sequence[str], CallOptions]:
        """Check a call's inputs and record the weights the properties (and callbacks) read; returns the tensors
        the callback asks for (a diffusers `PipelineCallback` names its own) and the call's `CallOptions`, which
        go on its `Conditioning`."""
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        self.check_inputs(prompt, negative_prompt, height, width, guidance_scale, domain_guidance_scale, weighted_prompts,
                          prompt_embeds, tensor_inputs)
        self._guidance_scale, self._domain_guidance_scale = guidance_scale, domain_guidance_scale
        self._guidance_rescale, self._clip_skip = guidance_rescale, clip_skip
        self._cross_attention_kwargs, self._interrupt = cross_attention_kwargs, False
        if not lora_in_uncond and not getattr(self.denoiser, "_hf_peft_config_loaded", False):
            raise ValueError("lora_in_uncond=False disables the prior's LoRA for ∅, but no LoRA is loaded "
                             "(load one with pipe.load_lora_weights(...))")
        if not isinstance(domain_guidance_every, int) or domain_guidance_every < 1:
            raise ValueError(f"domain_guidance_every must be a positive integer, got {domain_guidance_every!r}")
        if guidance_form in DOMAIN_TEXT_FORMS and domain_guidance_every > 1:
            raise ValueError("domain_guidance_every > 1 reuses Eq. A's domain term; the domain-text form computes every "
                             "term at every step (use guidance_form='decoupled' for the approximation)")
        if not all(math.isfinite(v) for v in layout) or layout[1] <= 0:
            raise ValueError(f"layout_guidance_scale must be finite and layout_sigma positive, got {layout!r}")
        options = CallOptions(self.resolve_domain_weights(domain_weights), self.check_guidance_form(guidance_form),
                              lora_in_uncond, domain_guidance_every, layout=layout)
        return tensor_inputs, options

    def check_guidance_form(self, form: str) -> str:
        """``form`` if this pipeline can sample with it (:data:`GUIDANCE_FORMS`), else a ValueError saying why not."""
        if form not in GUIDANCE_FORMS:
            raise ValueError(f"guidance_form must be one of {GUIDANCE_FORMS}, got {form!r}")
        if form in DOMAIN_TEXT_FORMS:
            if not isinstance(self.domain_model, NullTextUNet) or getattr(self, "shared_domain", None) is not None:
                raise ValueError(f"guidance_form={form!r} needs a null-text domain model (a NullTextUNet, not a "
                                 "text-conditioned fine-tune or a shared-base LoRA)")
            if self.family != "sd":
                raise ValueError(f"guidance_form={form!r} supports Stable Diffusion 1.x / 2.x priors, not {self.family}")
            if getattr(self.denoiser, "encoder_hid_proj", None) is not None:
                raise ValueError(f"guidance_form={form!r} does not support IP-Adapter image prompts")
            if getattr(self, "control_unet", None) is not None:
                raise ValueError(f"guidance_form={form!r} measures the control term with the domain model; it "
                                 "cannot be combined with a control_unet")
        return form

    def resolve_domain_weights(self, domain_weights: Sequence[float] | None) -> list[float]:
        """The weights of the extra domain models for this call: ``domain_weights``, else those stored with them."""
        extras = getattr(self, "extra_domains", None)
        if extras is None:
            if domain_weights:
                raise ValueError("domain_weights= weighs extra domain models, but this pipeline has none "
                                 "(pass extra_domains= to the pipeline)")
            return []
        weights = list(domain_weights) if domain_weights is not None else list(extras.config.weights or [1.0] * len(extras))
        if len(weights) != len(extras):
            raise ValueError(f"domain_weights has {len(weights)} entries but the pipeline has {len(extras)} extra domain models")
        for w in weights:
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"domain_weights must be finite numbers, got {w!r}")
        return [float(w) for w in weights]

    def plan(self, cond: Conditioning) -> GuidancePlan:
        """This step's Eq. C: the call's weights (a callback may have changed them), its extra domains, which model
        gives ∅ (the prior, or the prior without its LoRA) and which the control prompt (the prior or ``control_unet``)."""
        options = cond.options
        extras = [(f"{DOMAIN}_{j + 1}", w) for j, w in enumerate(options.domain_weights)]
        if options.guidance_form in DOMAIN_TEXT_FORMS:
            layout = options.layout if options.guidance_form == DOMAIN_TEXT_BANDS_FORM else None
            return cond.plan_domain_text(self.guidance_scale, self.domain_guidance_scale, extras, layout)
        return cond.plan(
            self.guidance_scale, self.domain_guidance_scale, extras,
            uncond_model=PRIOR if options.lora_in_uncond else PRISTINE_PRIOR,
            control_model=CONTROL if getattr(self, "control_unet", None) is not None else PRIOR,
        )

    def prepare_conditioning(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        domain_prompt: str | list[str] | None,
        weighted_prompts: Sequence[tuple[str, float]] | None,
        num_images_per_prompt: int,
        clip_skip: int | None,
        device: torch.device,
        control_window: tuple[float, float] = (0.0, 1.0),
        domain_window: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 1,
        unconditional: bool = True,
    ) -> Conditioning:
        """Every text input of one call as embeddings, one row per image; ``batch_size`` counts the images of a
        call without a prompt (for example several images to edit). ``unconditional=False``: no branch reads ∅, so
        the empty (or negative) prompt is not encoded unless given as ``negative_prompt_embeds``."""
        if prompt_embeds is not None:
            batch_size = _text(prompt_embeds).shape[0]
        elif isinstance(prompt, list):
            batch_size = len(prompt)
        n = batch_size * num_images_per_prompt

        def per_image(emb: Any) -> Any:
            return _map(lambda e: e.repeat_interleave(num_images_per_prompt, dim=0), emb)

        if prompt is not None:
            prompt_embeds = self.encode_text([prompt] if isinstance(prompt, str) else prompt, device, clip_skip)
        if negative_prompt_embeds is None and unconditional:
            negative_prompt_embeds = self.encode_negative(negative_prompt, batch_size, device)
        domain_cond = None
        if self.domain_model is not None and not isinstance(self.domain_model, NULL_TEXT_MODELS):
            # a text-conditioned fine-tune: rectified CFG
            text = domain_prompt if domain_prompt is not None else prompt
            texts = [text] * batch_size if text is None or isinstance(text, str) else text
            domain_cond = per_image(self.encode_text([t or "" for t in texts], device))
        extra = [(_map(lambda e: e.expand(n, *e.shape[1:]), self.encode_text([text], device)), weight)
                 for text, weight in weighted_prompts or []]
        return Conditioning(
            shared_domain=getattr(self, "shared_domain", None) is not None,
            n=n, negative_prompt_embeds=None if negative_prompt_embeds is None else per_image(negative_prompt_embeds),
            prompt_embeds=None if prompt_embeds is None else per_image(prompt_embeds), domain_cond=domain_cond,
            extra=extra, control_window=control_window, domain_window=domain_window,
        )

    def prepare_ip_adapter(self, image: Any, embeds: list[torch.Tensor] | None, cond: Conditioning,
                           device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """(negative, positive) image embeddings per IP-Adapter, one row per output image; None without an image
        prompt. As diffusers' ``prepare_ip_adapter_image_embeds`` (rows repeated to the call's images)."""
        if image is None and embeds is None:
            return None
        if image is not None and embeds is not None:
            raise ValueError("pass either ip_adapter_image or ip_adapter_image_embeds, not both")
        proj = getattr(self.unet, "encoder_hid_proj", None)
        if proj is None or not hasattr(proj, "image_projection_layers"):
            raise ValueError("ip_adapter_image needs an IP-Adapter on the prior: load one with pipe.load_ip_adapter(...)")
        negative, positive = [], []
        if embeds is None:
            images = image if isinstance(image, list) else [image]
            if len(images) != len(proj.image_projection_layers):
                raise ValueError(f"got {len(images)} ip_adapter_image for {len(proj.image_projection_layers)} IP-Adapters")
            if getattr(self, "image_encoder", None) is None or getattr(self, "feature_extractor", None) is None:
                raise ValueError("ip_adapter_image needs the image_encoder and feature_extractor that load_ip_adapter loads")
            for img, layer in zip(images, proj.image_projection_layers):
                pos, neg = self.encode_image(img, device, 1, not isinstance(layer, ImageProjection))
                positive.append(pos[None, :])
                negative.append(neg[None, :])
        else:
            if not isinstance(embeds, list) or any(e.ndim not in (3, 4) for e in embeds):
                raise ValueError("ip_adapter_image_embeds must be a list of 3-D or 4-D tensors (one per IP-Adapter)")
            for e in embeds:
                neg, pos = e.chunk(2)
                negative.append(neg)
                positive.append(pos)

        def rows(e: torch.Tensor) -> torch.Tensor:
            if cond.n % e.shape[0]:
                raise ValueError(f"IP-Adapter embeddings with {e.shape[0]} rows for {cond.n} images")
            return torch.cat([e] * (cond.n // e.shape[0])).to(device)

        return [rows(e) for e in negative], [rows(e) for e in positive]

    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.encode_image
    def encode_image(self, image, device, num_images_per_prompt, output_hidden_states=None):
        dtype = next(self.image_encoder.parameters()).dtype

        if not isinstance(image, torch.Tensor):
            image = self.feature_extractor(image, return_tensors="pt").pixel_values

        image = image.to(device=device, dtype=dtype)
        if output_hidden_states:
            image_enc_hidden_states = self.image_encoder(image, output_hidden_states=True).hidden_states[-2]
            image_enc_hidden_states = image_enc_hidden_states.repeat_interleave(num_images_per_prompt, dim=0)
            uncond_image_enc_hidden_states = self.image_encoder(
                torch.zeros_like(image), output_hidden_states=True
            ).hidden_states[-2]
            uncond_image_enc_hidden_states = uncond_image_enc_hidden_states.repeat_interleave(
                num_images_per_prompt, dim=0
            )
            return image_enc_hidden_states, uncond_image_enc_hidden_states
        else:
            image_embeds = self.image_encoder(image).image_embeds
            image_embeds = image_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            uncond_image_embeds = torch.zeros_like(image_embeds)

            return image_embeds, uncond_image_embeds

    def control_size_multiple(self) -> int:
        """What the output size implied by a control image is rounded down to (diffusers' rule)."""
        factor = self.adapter.downscale_factor if getattr(self, "adapter", None) is not None else 1
        return max(self.vae_scale_factor, factor)

    def prepare_spatial_control(
        self, image: Any, height: int, width: int, cond: Conditioning, num_images_per_prompt: int,
        controlnet_conditioning_scale: float | list[float], adapter_conditioning_scale: float | list[float],
        to_domain: bool, guess_mode: bool, window: tuple[float, float], device: torch.device,
    ) -> SpatialControl | None:
        """The control image(s) as one row per output image (diffusers' ``prepare_image``), the adapter's features,
        the scales, the window and the routing; None without a ControlNet or adapter."""
        controlnet, adapter = getattr(self, "controlnet", None), getattr(self, "adapter", None)
        if guess_mode:
            raise ValueError("guess_mode=True is not supported; only guess_mode=False")
        if getattr(self, "shared_domain", None) is not None and not to_domain and (controlnet is not None or adapter is not None):
            raise ValueError("controlnet_to_domain=False is not supported with a shared-base domain model")
        if controlnet is None and adapter is None:
            if image is not None:
                raise ValueError("image= is a control image, but this pipeline has no controlnet or adapter")
            return None
        if image is None:
            raise ValueError("this pipeline has a controlnet/adapter: pass its control image as image=")
        check_control_compatible(self.unet, controlnet, adapter, self.vae_scale_factor)
        images, scales, state = [], [], None
        if controlnet is not None:
            scales = controlnet_scales(controlnet, controlnet_conditioning_scale)
            images = prepare_controlnet_images(controlnet, image, height, width, cond.n, num_images_per_prompt,
                                               self.vae_scale_factor, device)
        if adapter is not None:
            state = prepare_adapter_state(adapter, image, adapter_conditioning_scale, height, width, cond.n,
                                          num_images_per_prompt, device)
        return SpatialControl(controlnet, images, scales, state, window, to_domain)

    def guided(self, cond: Conditioning | None = None, step: int = 0, num_steps: int = 1) -> dict[str, Callable]:
        """The noise predictors of Eq. C by name: the prior (``unet``) and the domain model. With spatial control
        (``cond.spatial``) each predictor adds the ControlNet / adapter residuals for its own batch; the domain
        branch only with ``to_domain``, its ControlNet then reading the prior's unconditional text."""
        spatial = None if cond is None or cond.spatial is None or not cond.spatial.active(step, num_steps) else cond.spatial

        shared = getattr(self, "shared_domain", None)

        def prior(x: torch.Tensor, t: torch.Tensor, emb: Any, unet: Any = None) -> torch.Tensor:
            extra = spatial.residuals(x, t, _text(emb)) if spatial is not None else {}
            rows = emb.get(ROWS) if isinstance(emb, dict) and shared is not None and unet is None else None
            with shared.rows(rows) if rows is not None else contextlib.nullcontext():
                return self.call_denoiser(unet or self.denoiser, x, t, self.model_inputs(emb, x.shape[0]), extra,
                                          self.cross_attention_kwargs)

        def pristine(x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            self.denoiser.disable_lora()  # the prior without its LoRA, for this branch only
            try:
                return prior(x, t, emb)
            finally:
                self.denoiser.enable_lora()

        def domain_residuals(x: torch.Tensor, t: torch.Tensor, emb: Any) -> dict:
            if spatial is None or not spatial.to_domain:
                return {}
            text = _text(emb if emb is not None else cond.negative_prompt_embeds)
            return spatial.residuals(x, t, torch.cat([text] * (x.shape[0] // text.shape[0])))

        def domain(x: torch.Tensor, t: torch.Tensor, emb: Any) -> torch.Tensor:
            return self.call_denoiser(self.domain_model, x, t, self.model_inputs(emb, x.shape[0]), domain_residuals(x, t, emb))

        def extra_domain(j: int) -> Callable:
            def predict(x: torch.Tensor, t: torch.Tensor, emb: Any) -> torch.Tensor:
                model = functools.partial(self.extra_domains, j)
                return self.call_denoiser(model, x, t, self.model_inputs(emb, x.shape[0]), domain_residuals(x, t, emb))
            return predict

        def domain_text_model(x: torch.Tensor, t: torch.Tensor, emb: Any) -> torch.Tensor:
            with prior_text_pathway(self.domain_model, self.denoiser) as unet:
                return self.call_denoiser(unet, x, t, self.model_inputs(emb, x.shape[0]), domain_residuals(x, t, emb))

        models = {PRIOR: prior, DOMAIN: domain, PRISTINE_PRIOR: pristine}
        if isinstance(self.domain_model, NullTextUNet):
            models[DOMAIN_TEXT] = domain_text_model
        if getattr(self, "control_unet", None) is not None:
            models[CONTROL] = lambda x, t, emb: prior(x, t, emb, self.control_unet)
        extras = getattr(self, "extra_domains", None)
        for j in range(len(extras) if extras is not None else 0):
            models[f"{DOMAIN}_{j + 1}"] = extra_domain(j)
        return models

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, i: int, num_steps: int) -> torch.Tensor:
        """The combined prediction ``eps_u + Σ_k w_k (eps_k − eps_u)`` at step ``i`` of ``num_steps``.

        With ``domain_guidance_every = k > 1`` (an opt-in approximation) the domain terms' differences
        ``eps_domain − eps_u`` are computed on every k-th step and reused, at the current weights, on the steps between.
        """
        # flow-matching schedulers have no input scaling
        x_in = self.scheduler.scale_model_input(latents, t) if hasattr(self.scheduler, "scale_model_input") else latents
        if getattr(self, "student", None) is not None:  # a distilled student: one call (indomain.student)
            return student_predict(self, x_in, t, cond, i, num_steps)
        plan = self.plan(cond)
        every, cache = cond.options.domain_every, cond.options.domain_delta
        reused = []
        if every > 1 and i % every:
            reused = [term for term in plan.terms if _domain_key(term) in cache and term.active(i, num_steps)]
            plan = GuidancePlan(plan.uncond, [term for term in plan.terms if all(term is not r for r in reused)])
        run = getattr(self, "_branch_runner", None)
        out = MultiGuidance(self.guided(cond, i, num_steps), plan, run=run)(x_in, t, i, num_steps)
        if every > 1 and out.eps_u is not None:
            for term, eps in zip(out.terms, out.eps_k):
                if _domain_key(term) is not None:
                    cache[_domain_key(term)] = eps - out.eps_u
        for term in reused:
            out.pred = out.pred + term.weight * cache[_domain_key(term)]
        if self.guidance_rescale > 0 and out.terms:
            return rescale_noise_cfg(out.pred, _rescale_reference(out, cond.prompt_embeds), guidance_rescale=self.guidance_rescale)
        return out.pred

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: Conditioning,
        step_kwargs: dict,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The sampling loop: predict, scheduler step, then ``after_step(i, latents)`` (e.g. inpainting's blend),
        then the callback, which may replace the latents and ``cond``'s embeddings."""
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                eps = self.predict(latents, t, cond, i, len(timesteps))
                latents = self.scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
                if after_step is not None:
                    latents = after_step(i, latents)
                if callback_on_step_end is not None:
                    values = {"latents": latents, "prompt_embeds": cond.prompt_embeds,
                              "negative_prompt_embeds": cond.negative_prompt_embeds}
                    changed = callback_on_step_end(self, i, t, {k: values[k] for k in callback_on_step_end_tensor_inputs})
                    latents = changed.pop("latents", latents)
                    cond.prompt_embeds = _rows(changed.pop("prompt_embeds", cond.prompt_embeds), cond.n, "prompt_embeds")
                    cond.negative_prompt_embeds = _rows(changed.pop("negative_prompt_embeds", cond.negative_prompt_embeds),
                                                        cond.n, "negative_prompt_embeds")
                progress_bar.update()
        return latents

    def latents_to_images(self, latents: torch.Tensor, output_type: str, generator: Any = None) -> Any:
        """Latents to images of ``output_type`` ("pil", "np", "pt" or "latent")."""
        require_finite(latents, "the sampled latents (a guidance weight too large?)")
        if output_type == "latent":
            return latents
        decoded = self.vae.decode(self.unscale_latents(latents), return_dict=False, generator=generator)[0]
        require_finite(decoded, "the decoded images")
        return self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[True] * len(latents))


@dataclass
class CallOptions:
    """The settings of one call that shape its plan, beyond the weights (``guidance_scale`` and
    ``domain_guidance_scale`` stay on the pipeline, where diffusers' callbacks read and change them)."""

    domain_weights: list[float] = field(default_factory=list)  # of the extra domain models (Eq. C)
    guidance_form: str = "decoupled"  # how the control term is measured: "decoupled" (Eq. A), "domain-text", ...
    lora_in_uncond: bool = True  # ∅ from the LoRA'd prior (diffusers' behaviour), else from the prior without it
    domain_every: int = 1  # run the domain terms every k-th step (an opt-in approximation)
    domain_delta: dict = field(default_factory=dict)  # the domain terms' differences kept for the steps between
    layout: tuple[float, float] = (DEFAULT_LAYOUT_GUIDANCE_SCALE, LAYOUT_SIGMA)  # domain-text-bands: (w_l, sigma)
    student_weights: tuple | None = None  # a distilled student's (key, [(student, rows, class_labels)]) while they stay
    student_rows: tuple[bool, ...] = (True,)  # per prompt: not empty (a student's prompt-less rows differ)


@dataclass
class Conditioning:
    """The text side of one call, one row per image; a callback may replace ``prompt_embeds`` and
    ``negative_prompt_embeds`` between steps."""

    n: int
    negative_prompt_embeds: torch.Tensor | None  # the prior's ∅ (or the negative prompt); None if no branch reads it
    prompt_embeds: torch.Tensor | None  # the control prompt
    domain_cond: torch.Tensor | None  # text for a text-conditioned domain model; None for a NullTextUNet
    extra: list[tuple[torch.Tensor, float]]  # weighted prompts (GCFG terms)
    control_window: tuple[float, float] = (0.0, 1.0)
    domain_window: tuple[float, float] = (0.0, 1.0)
    spatial: SpatialControl | None = None  # ControlNet / T2I-Adapter residuals for every branch (see control.py)
    ip_adapter: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # (negative, positive) image embeddings
    shared_domain: bool = False  # the domain model shares the prior's UNet (shared_base.py): its rows ride in prior calls
    options: CallOptions = field(default_factory=CallOptions)  # the call's settings that shape its plan

    @property
    def dtype(self) -> torch.dtype:
        """The text embeddings' dtype, the latents' too."""
        return _text(self.negative_prompt_embeds if self.negative_prompt_embeds is not None else self.prompt_embeds).dtype

    def prior_cond(self, emb: torch.Tensor, positive: bool, domain: bool = False) -> Any:
        """A prior branch's condition: the text, or a batchable dict {text, ...} with an image prompt (ip0, ip1, ...)
        and, with a shared-base domain model, the per-row domain flags (`shared_base.ROWS`)."""
        if self.ip_adapter is None and not self.shared_domain:
            return emb
        cond = dict(emb) if isinstance(emb, dict) else {TEXT: emb}
        if self.ip_adapter is not None:
            cond.update({f"{IP}{j}": e for j, e in enumerate(self.ip_adapter[int(positive)])})
        if self.shared_domain:
            cond[ROWS] = domain_flags(_text(emb).shape[0], domain)
        return cond

    def plan(
        self, guidance_scale: float, domain_guidance_scale: float, extra_domains: Sequence[tuple[str, float]] = (),
        uncond_model: str = PRIOR, control_model: str = PRIOR,
    ) -> GuidancePlan:
        """Eq. C for these weights: ∅ from ``uncond_model`` (the prior), the domain term, one term per extra domain
        model ``(name, weight)``, the control prompt from ``control_model`` (the prior), the weighted prompts."""
        if self.shared_domain:  # the domain model's rows ride in the prior's call
            domain, domain_cond = PRIOR, self.prior_cond(self.negative_prompt_embeds, False, domain=True)
        else:
            domain, domain_cond = DOMAIN, self.domain_cond
        plan = decoupled(
            domain_guidance_scale, guidance_scale,
            None if self.prompt_embeds is None else self.prior_cond(self.prompt_embeds, True),
            self.prior_cond(self.negative_prompt_embeds, False), domain=domain, prior=uncond_model,
            control=control_model, domain_cond=domain_cond, domain_window=self.domain_window,
            control_window=self.control_window,
            extra_domains=[Guidance(name, None, w, *self.domain_window) for name, w in extra_domains])
        weighted = [Guidance(PRIOR, self.prior_cond(emb, True), w, *self.control_window) for emb, w in self.extra]
        return GuidancePlan(plan.uncond, plan.terms + tuple(weighted))

    def plan_domain_text(self, guidance_scale: float, domain_guidance_scale: float,
                         extra_domains: Sequence[tuple[str, float]] = (),
                         layout: tuple[float, float] | None = None) -> GuidancePlan:
        """The ``domain-text`` form (`indomain.guidance.domain_text`): the domain and control terms both through the
        domain model with the prior's text pathway; extra domain models and weighted prompts as in `plan`. With
        ``layout = (w_l, sigma)``, the ``domain-text-bands`` form (`indomain.guidance.domain_text_bands`)."""
        if self.ip_adapter is not None:
            raise ValueError("guidance_form='domain-text' does not support IP-Adapter image prompts")
        if layout is None:
            base = domain_text(domain_guidance_scale, guidance_scale, self.prompt_embeds, self.negative_prompt_embeds,
                               domain_window=self.domain_window, control_window=self.control_window)
        else:
            base = domain_text_bands(domain_guidance_scale, guidance_scale, layout[0], self.prompt_embeds,
                                     self.negative_prompt_embeds, layout[1], domain_window=self.domain_window,
                                     control_window=self.control_window)
        terms = [term for term in base.terms if term.weight != 0]
        terms += [Guidance(name, None, w, *self.domain_window) for name, w in extra_domains]
        terms += [Guidance(PRIOR, emb, w, *self.control_window) for emb, w in self.extra]
        return GuidancePlan(base.uncond, terms)


GUIDANCE_FORMS = ("decoupled", "domain-text", "domain-text-bands")  # how the prompt's term is measured (`__call__`)
DOMAIN_TEXT_FORM, DOMAIN_TEXT_BANDS_FORM = "domain-text", "domain-text-bands"
DOMAIN_TEXT_FORMS = (DOMAIN_TEXT_FORM, DOMAIN_TEXT_BANDS_FORM)  # the forms that measure the prompt in the domain
NULL_TEXT_MODELS = (NullTextUNet, NullTextTransformer)  # domain models that ignore text
PRISTINE_PRIOR = "prior_without_lora"  # the prior with its LoRA adapters disabled (lora_in_uncond=False)
CONTROL = "control"  # control_unet: the model of the control prompt's term


def checked_extra_domains(unet: Any, extras: Any, prediction_type: str) -> DomainModels | None:
    """``extras`` (a `DomainModels`, a list of `NullTextUNet`s or None) as a `DomainModels` that fits the prior."""
    if extras is not None and not isinstance(extras, DomainModels):
        extras = DomainModels.from_models(list(extras))
    for j, model in enumerate(extras.models if extras is not None else []):
        try:
            check_compatible(unet, model, prediction_type)
        except ValueError as err:
            raise ValueError(f"extra domain model {j + 1}: {err}") from None
    return extras


def check_control_unet(unet: Any, control_unet: Any) -> None:
    """Raise a ValueError naming the first difference between the prior and a customised control UNet."""
    if control_unet is None:
        return
    if not isinstance(control_unet, UNet2DConditionModel):
        raise ValueError(f"control_unet must be a UNet2DConditionModel of the prior's architecture, got {type(control_unet).__name__}")
    for key in (*STRUCTURE_KEYS, "cross_attention_dim", "down_block_types", "up_block_types", "layers_per_block", "attention_head_dim"):
        a, b = unet.config.get(key), control_unet.config.get(key)
        a, b = (list(v) if isinstance(v, (tuple, list)) else v for v in (a, b))
        if a != b:
            raise ValueError(f"control_unet does not fit this prior: its {key} is {b!r}, the prior UNet's is {a!r}")


def _domain_key(term: Guidance) -> str | None:
    """The name of a domain term (a domain model's, or a shared-base domain model's rows in the prior), else None."""
    if term.model.startswith(DOMAIN) and term.model != DOMAIN_TEXT:  # domain-text terms are always computed
        return term.model
    if isinstance(term.cond, dict) and ROWS in term.cond and bool(term.cond[ROWS].all()):
        return DOMAIN
    return None


def _map(fn: Callable[[torch.Tensor], torch.Tensor], emb: Any) -> Any:
    """``fn`` on a text condition: a tensor, or each tensor of a dict (SDXL / SD3: text and pooled embeddings)."""
    return {k: fn(v) for k, v in emb.items()} if isinstance(emb, dict) else fn(emb)


def _text(emb: Any) -> Any:
    """The token embeddings of a text condition (a tensor, or the ``text`` entry of a dict)."""
    return emb[TEXT] if isinstance(emb, dict) else emb


def _rows(emb: Any, n: int, name: str) -> Any:
    """A callback's replacement embeddings: one row per image (a single row is shared by all)."""
    if emb is None or _text(emb).shape[0] == n:
        return emb
    if _text(emb).shape[0] == 1:
        return _map(lambda e: e.expand(n, *e.shape[1:]), emb)
    raise ValueError(f"callback returned {name} with {_text(emb).shape[0]} rows; expected {n} (one per image) or 1")


def _rescale_reference(out: Any, prompt_embeds: torch.Tensor | None) -> torch.Tensor:
    """What ``guidance_rescale`` matches the spread of: the control prompt's prediction, else the first term's."""
    for term, eps in zip(out.terms, out.eps_k):
        if prompt_embeds is not None and term.cond is not None and _text(term.cond) is _text(prompt_embeds):
            return eps
    return out.eps_k[0]


# The two module-level helpers of diffusers' Stable Diffusion pipeline, copied (as diffusers' own pipelines do) so
# that sampling does not import that module: it pulls in the CLIP/SigLIP image processors and their warnings.


# Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.rescale_noise_cfg (diffusers 0.42.1)
def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    r"""
    Rescales `noise_cfg` tensor based on `guidance_rescale` to improve image quality and fix overexposure. Based on
    Section 3.4 from [Common Diffusion Noise Schedules and Sample Steps are
    Flawed](https://huggingface.co/papers/2305.08891).

    Args:
        noise_cfg (`torch.Tensor`):
            The predicted noise tensor for the guided diffusion process.
        noise_pred_text (`torch.Tensor`):
            The predicted noise tensor for the text-guided diffusion process.
        guidance_rescale (`float`, *optional*, defaults to 0.0):
            A rescale factor applied to the noise predictions.

    Returns:
        noise_cfg (`torch.Tensor`): The rescaled noise prediction tensor.
    """
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    # rescale the results from guidance (fixes overexposure)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    # mix with the original results from guidance by factor guidance_rescale to avoid "plain looking" images
    noise_cfg = guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg
    return noise_cfg


# Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.retrieve_timesteps (diffusers 0.42.1)
def retrieve_timesteps(
    scheduler,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: list[int] | None = None,
    sigmas: list[float] | None = None,
    **kwargs,
):
    r"""
    Calls the scheduler's `set_timesteps` method and retrieves timesteps from the scheduler after the call. Handles
    custom timesteps. Any kwargs will be supplied to `scheduler.set_timesteps`.

    Args:
        scheduler (`SchedulerMixin`):
            The scheduler to get timesteps from.
        num_inference_steps (`int`):
            The number of diffusion steps used when generating samples with a pre-trained model. If used, `timesteps`
            must be `None`.
        device (`str` or `torch.device`, *optional*):
            The device to which the timesteps should be moved to. If `None`, the timesteps are not moved.
        timesteps (`list[int]`, *optional*):
            Custom timesteps used to override the timestep spacing strategy of the scheduler. If `timesteps` is passed,
            `num_inference_steps` and `sigmas` must be `None`.
        sigmas (`list[float]`, *optional*):
            Custom sigmas used to override the timestep spacing strategy of the scheduler. If `sigmas` is passed,
            `num_inference_steps` and `timesteps` must be `None`.

    Returns:
        `tuple[torch.Tensor, int]`: A tuple where the first element is the timestep schedule from the scheduler and the
        second element is the number of inference steps.
    """
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None:
        accepts_timesteps = "timesteps" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accepts_timesteps:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" timestep schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    elif sigmas is not None:
        accept_sigmas = "sigmas" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accept_sigmas:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" sigmas schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        timesteps = scheduler.timesteps
    return timesteps, num_inference_steps


def register_with_diffusers(pipeline_cls: type) -> type:
    """Let ``DiffusionPipeline.from_pretrained(saved_folder)`` return ``pipeline_cls`` for a folder whose
    ``model_index.json`` names it: diffusers looks the class name up as an attribute of the ``diffusers`` module, so
    each indomain pipeline module adds its class there when it is imported. No code is read from the folder."""
    import diffusers

    if getattr(diffusers, "_objects", None) is not None:
        diffusers._objects.setdefault(pipeline_cls.__name__, pipeline_cls)  # the lazy module's extra names
    setattr(diffusers, pipeline_cls.__name__, pipeline_cls)
    return pipeline_cls


register_with_diffusers(InDomainPipeline)

