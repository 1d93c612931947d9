"""`InDomainSD3Pipeline`: guidance-decoupled in-domain sampling on a flow-matching MMDiT prior (Stable Diffusion 3).

Beyond the paper, which uses UNets. The method needs only a shared prediction space: an SD3 transformer predicts
a velocity ``v = noise − x0`` on a flow-matching schedule, and Eq. C combines velocities with the same affine
formula (``v_u + Σ_k w_k (v_k − v_u)``; `indomain.guidance` explains why the space does not matter). The domain model
is a `NullTextTransformer`: the prior's transformer with its text input fixed to the empty prompt's embeddings.

The sampling core of `InDomainPipeline`, with SD3's family hooks, as `StableDiffusion3Pipeline` (diffusers 0.42):

* **prompt encoding** (`encode_text`): both CLIPs' penultimate hidden states (concatenated, zero-padded to the T5
  width) followed by T5's (zeros without ``text_encoder_3``), and the two pooled embeddings concatenated; a condition
  is the dict ``{"text": (N, 77 + L_t5, D), "pooled": (N, P)}``. ∅ is the encoded empty prompt.
* **the model call** (`indomain.families.call_denoiser`, as training's): ``transformer(hidden_states, timestep (one
  per row), encoder_hidden_states, pooled_projections, joint_attention_kwargs)``.
* **latents**: no input scaling; decoded as ``latents / scaling_factor + shift_factor``; ``mu`` for schedulers with
  dynamic shifting.

With ``domain_guidance_scale=0`` it is `StableDiffusion3Pipeline` (tests/test_families.py). Not supported: SD3
ControlNets, IP-Adapter, skip-layer guidance, ``prompt_2`` / ``prompt_3``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import SD3LoraLoaderMixin

from .nulltext import NullTextTransformer, check_compatible
from .families import POOLED, TEXT
from .pipeline import InDomainPipeline, InDomainPipelineOutput
from .pipeline import register_with_diffusers

FLOW = "flow"  # the prediction type of a flow-matching prior: the velocity noise − x0


class InDomainSD3Pipeline(SD3LoraLoaderMixin, InDomainPipeline):
    """In-domain generation with a frozen SD3 prior plus a `NullTextTransformer` domain model.

    Components as `StableDiffusion3Pipeline` (``transformer``, ``scheduler``, ``vae``, three text encoders and their
    tokenizers; ``text_encoder_3`` may be None) plus ``domain_transformer``. The call takes `InDomainPipeline`'s
    arguments; ``joint_attention_kwargs`` replaces ``cross_attention_kwargs``, ``max_sequence_length`` sets T5's length.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->domain_transformer->vae"
    family = "sd3"
    _optional_components = ["text_encoder_3", "tokenizer_3", "domain_transformer"]
    domain_component = "domain_transformer"

    def __init__(
        self,
        transformer: Any,  # SD3Transformer2DModel
        scheduler: Any,  # FlowMatchEulerDiscreteScheduler
        vae: AutoencoderKL,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        text_encoder_3: Any = None,
        tokenizer_3: Any = None,
        domain_transformer: NullTextTransformer | None = None,
    ) -> None:
        DiffusionPipeline.__init__(self)
        if domain_transformer is not None:
            check_compatible(transformer, domain_transformer, FLOW)
        self.register_modules(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3, domain_transformer=domain_transformer,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._max_sequence_length = 256

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, domain_transformer: Any = None,
                        **kwargs: Any) -> "InDomainSD3Pipeline":
        """Load the SD3 prior and, optionally, its domain model (folder or `NullTextTransformer`), as
        `InDomainPipeline.from_pretrained`."""
        domain = kwargs.pop("domain_unet", None) if domain_transformer is None else domain_transformer
        return super().from_pretrained(pretrained_model_name_or_path, domain_unet=domain, **kwargs)

    # -- the family hooks ---------------------------------------------------------------------------------

    @property
    def denoiser(self) -> Any:
        return self.transformer

    @property
    def prediction_type(self) -> str:
        return FLOW

    def set_extra_domains(self, models: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        raise ValueError("extra domain models are not supported on an SD3 prior yet")

    def _clip(self, prompts: list[str], tokenizer: Any, encoder: Any, device: torch.device,
              clip_skip: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        texts = self.maybe_convert_prompt(prompts, tokenizer)
        ids = tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids.to(device), output_hidden_states=True)
        hidden = out.hidden_states[-(2 if clip_skip is None else clip_skip + 2)]
        return hidden.to(dtype=self.text_encoder.dtype, device=device), out[0]

    def encode_text(self, prompts: Sequence[str], device: torch.device, clip_skip: int | None = None) -> dict:
        """``{"text": (N, 77 + L_t5, D), "pooled": (N, P)}`` as `StableDiffusion3Pipeline.encode_prompt` computes them."""
        prompts = list(prompts)
        h1, p1 = self._clip(prompts, self.tokenizer, self.text_encoder, device, clip_skip)
        h2, p2 = self._clip(prompts, self.tokenizer_2, self.text_encoder_2, device, clip_skip)
        length = self._max_sequence_length
        if self.text_encoder_3 is None:
            t5 = torch.zeros(len(prompts), length, self.transformer.config.joint_attention_dim, device=device,
                             dtype=self.text_encoder.dtype)
        else:
            ids = self.tokenizer_3(prompts, padding="max_length", max_length=length, truncation=True,
                                   add_special_tokens=True, return_tensors="pt").input_ids
            t5 = self.text_encoder_3(ids.to(device))[0].to(dtype=self.text_encoder_3.dtype, device=device)
        clip = torch.cat([h1, h2], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {TEXT: torch.cat([clip, t5], dim=-2), POOLED: torch.cat([p1, p2], dim=-1)}

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.vae.config.scaling_factor + self.vae.config.shift_factor

    def scheduler_kwargs(self, height: int, width: int) -> dict:
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting"):
            return {}
        # diffusers' calculate_shift: mu linear in the number of image tokens
        patch = self.transformer.config.patch_size
        tokens = (height // self.vae_scale_factor // patch) * (width // self.vae_scale_factor // patch)
        base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        lo, hi = config.get("base_shift", 0.5), config.get("max_shift", 1.16)
        m = (hi - lo) / (top - base)
        return {"mu": tokens * m + lo - m * base}

    # -- the call ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        guidance_scale: float = 7.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        joint_attention_kwargs: dict | None = None,
        max_sequence_length: int = 256,
        **kwargs: Any,
    ) -> InDomainPipelineOutput | tuple:
        """Generate in-domain images with an SD3 prior.

        Args:
            guidance_scale: the control weight w_c (SD3's default 7.0).
            prompt_embeds / pooled_prompt_embeds, negative_prompt_embeds / negative_pooled_prompt_embeds: precomputed
                embeddings, in pairs, as `StableDiffusion3Pipeline`.
            joint_attention_kwargs: passed to the prior's transformer (e.g. ``{"scale": 0.8}`` for a LoRA).
            max_sequence_length: T5's token count.
            Everything else as `InDomainPipeline.__call__` (``domain_guidance_scale`` is w_d).
        """
        for name in ("image", "ip_adapter_image", "ip_adapter_image_embeds", "prompt_2", "prompt_3",
                     "skip_guidance_layers"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}= is not supported by InDomainSD3Pipeline (see its module docstring)")
        multiple = self.vae_scale_factor * self.transformer.config.patch_size
        height = height or self.transformer.config.sample_size * self.vae_scale_factor
        width = width or self.transformer.config.sample_size * self.vae_scale_factor
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be divisible by {multiple} (VAE factor x patch size), got {height}x{width}")
        self._max_sequence_length = max_sequence_length

        def pair(emb: torch.Tensor | None, pooled: torch.Tensor | None, name: str) -> dict | None:
            if emb is None:
                return None
            if pooled is None:
                raise ValueError(f"{name} needs pooled_{name} too (SD3 conditions are pairs), as in StableDiffusion3Pipeline")
            return {TEXT: emb, POOLED: pooled}

        return super().__call__(
            prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, guidance_scale=guidance_scale,
            prompt_embeds=pair(prompt_embeds, pooled_prompt_embeds, "prompt_embeds"),
            negative_prompt_embeds=pair(negative_prompt_embeds, negative_pooled_prompt_embeds, "negative_prompt_embeds"),
            cross_attention_kwargs=joint_attention_kwargs, **kwargs,
        )


register_with_diffusers(InDomainSD3Pipeline)  # DiffusionPipeline.from_pretrained(saved) finds it
