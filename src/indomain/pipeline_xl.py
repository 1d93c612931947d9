"""`InDomainXLPipeline`: guidance-decoupled in-domain sampling on a Stable Diffusion XL prior.

The sampling core of `InDomainPipeline` (one loop, one combiner) with SDXL's family hooks, as
`StableDiffusionXLPipeline` (diffusers 0.42) does them:

* **prompt encoding** (`encode_text`): both CLIP text encoders' penultimate hidden states, concatenated, and
  ``text_encoder_2``'s pooled embedding; a condition is the dict ``{"text": (N, 77, D), "pooled": (N, P)}``. With
  ``force_zeros_for_empty_prompt`` (SDXL base) and no negative prompt, ∅ is all zeros.
* **the model call** (`indomain.families.denoiser_inputs`, as training's): ``added_cond_kwargs = {text_embeds: pooled,
  time_ids}``; here the time ids ``original_size + crops_coords_top_left + target_size`` are shared by every branch.
  The null-text domain model holds its pooled input constant (`NullTextUNet` with ``pooled_dim``); the time ids stay
  inputs.
* **decoding**: a float16 VAE with ``force_upcast`` decodes in float32; ``latents_mean`` / ``latents_std`` are used
  when the VAE has them.

With ``domain_guidance_scale=0`` it is `StableDiffusionXLPipeline` (tests/test_families.py). Not supported: ControlNet /
T2I-Adapter (SDXL's need the time ids in their call), ``prompt_2``, negative size conditioning, the refiner and
``denoising_end``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers

from .families import POOLED, SDXL, TEXT, denoiser_inputs
from .nulltext import DomainModels, NullTextUNet, check_compatible
from .pipeline import InDomainPipeline, InDomainPipelineOutput, check_control_unet, checked_extra_domains
from .pipeline import register_with_diffusers


class InDomainXLPipeline(StableDiffusionXLLoraLoaderMixin, InDomainPipeline):
    """In-domain generation with a frozen SDXL prior plus a null-text domain model.

    Components as `StableDiffusionXLPipeline` (``vae``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``,
    ``tokenizer_2``, ``unet``, ``scheduler``) plus ``domain_unet`` (an SDXL `NullTextUNet`), ``extra_domains`` and
    ``control_unet`` as in `InDomainPipeline`. The call takes `InDomainPipeline`'s arguments and SDXL's size
    conditioning.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->control_unet->domain_unet->extra_domains->vae"
    family = "sdxl"
    _optional_components = ["tokenizer", "text_encoder", "domain_unet", "extra_domains", "control_unet", "image_encoder",
                            "feature_extractor"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: Any,  # CLIPTextModel
        text_encoder_2: Any,  # CLIPTextModelWithProjection
        tokenizer: Any,
        tokenizer_2: Any,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        domain_unet: NullTextUNet | UNet2DConditionModel | None = None,
        extra_domains: DomainModels | Sequence[NullTextUNet] | None = None,
        control_unet: UNet2DConditionModel | None = None,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        DiffusionPipeline.__init__(self)
        if domain_unet is not None:
            check_compatible(unet, domain_unet, scheduler.config.prediction_type)
        extra_domains = checked_extra_domains(unet, extra_domains, scheduler.config.prediction_type)
        check_control_unet(unet, control_unet)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
            unet=unet, scheduler=scheduler, domain_unet=domain_unet, extra_domains=extra_domains, control_unet=control_unet,
            image_encoder=image_encoder, feature_extractor=feature_extractor,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._add_time_ids: torch.Tensor | None = None

    # -- the family hooks ---------------------------------------------------------------------------------

    def _encoders(self) -> list[tuple[Any, Any]]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]

    def _text_dtype(self) -> torch.dtype:
        return self.text_encoder_2.dtype if self.text_encoder_2 is not None else self.unet.dtype

    def encode_text(self, prompts: Sequence[str], device: torch.device, clip_skip: int | None = None) -> dict:
        """``{"text": (N, 77, D), "pooled": (N, P)}`` as `StableDiffusionXLPipeline.encode_prompt` computes them."""
        hidden, pooled = [], None
        for tokenizer, encoder in self._encoders():
            texts = self.maybe_convert_prompt(list(prompts), tokenizer)
            ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = encoder(ids.to(device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # text_encoder_2's projected pooled output
                pooled = out[0]
            hidden.append(out.hidden_states[-(2 if clip_skip is None else clip_skip + 2)])
        if pooled is None:
            raise ValueError("an SDXL prior needs text_encoder_2 (CLIPTextModelWithProjection) for the pooled embedding")
        dtype = self._text_dtype()
        return {TEXT: torch.cat(hidden, dim=-1).to(dtype=dtype, device=device), POOLED: pooled.to(device=device)}

    def encode_negative(self, negative_prompt: str | list[str] | None, batch_size: int, device: torch.device) -> dict:
        if negative_prompt is None and self.config.force_zeros_for_empty_prompt:
            width = sum(enc.config.hidden_size for _, enc in self._encoders())
            length = self.tokenizer_2.model_max_length
            return {TEXT: torch.zeros(batch_size, length, width, dtype=self._text_dtype(), device=device),
                    POOLED: torch.zeros(batch_size, self.text_encoder_2.config.projection_dim, device=device,
                                        dtype=self.text_encoder_2.dtype)}
        return super().encode_negative(negative_prompt, batch_size, device)

    def model_inputs(self, emb: Any, batch: int) -> dict:
        if self._add_time_ids is None:
            raise RuntimeError("SDXL time ids are set by __call__; call the pipeline, not its sampling core alone")
        return denoiser_inputs(SDXL, emb, batch, self._add_time_ids)

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
            return latents * std / cfg.scaling_factor + mean
        return latents / cfg.scaling_factor

    def latents_to_images(self, latents: torch.Tensor, output_type: str, generator: Any = None) -> Any:
        # SDXL's VAE overflows in float16: decode in float32 when its config asks for it, as diffusers does
        if output_type == "latent" or not (self.vae.dtype == torch.float16 and self.vae.config.force_upcast):
            return super().latents_to_images(latents, output_type, generator)
        self.vae.to(torch.float32)
        try:
            return super().latents_to_images(latents.float(), output_type, generator)
        finally:
            self.vae.to(torch.float16)

    def time_ids(self, original_size: tuple[int, int], crops_coords_top_left: tuple[int, int],
                 target_size: tuple[int, int]) -> torch.Tensor:
        """SDXL's micro-conditioning ``[original_size, crops_coords_top_left, target_size]`` as a (1, 6) tensor."""
        ids = [*original_size, *crops_coords_top_left, *target_size]
        projection = self.text_encoder_2.config.projection_dim
        passed = self.unet.config.addition_time_embed_dim * len(ids) + projection
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ValueError(f"the SDXL UNet expects an added embedding of {expected} values, but its time ids and "
                             f"text_encoder_2 (projection_dim {projection}) give {passed}: the prior's parts do not fit")
        return torch.tensor([ids], dtype=self._text_dtype())

    # -- the call ------------------------------------------------------------------------------------------

    def encode_prompt(self, prompt: Any, device: torch.device, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt: Any = None, **_: Any) -> tuple:
        """`StableDiffusionXLPipeline.encode_prompt`'s result: ``(prompt_embeds, negative_prompt_embeds,
        pooled_prompt_embeds, negative_pooled_prompt_embeds)``, each repeated ``num_images_per_prompt`` times."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        pos = self.encode_text(prompts, device)
        neg = self.encode_negative(negative_prompt, len(prompts), device) if do_classifier_free_guidance else None
        rep = lambda e: None if e is None else e.repeat_interleave(num_images_per_prompt, dim=0)  # noqa: E731
        return (rep(pos[TEXT]), rep(neg and neg[TEXT]), rep(pos[POOLED]), rep(neg and neg[POOLED]))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> InDomainPipelineOutput | tuple:
        """Generate in-domain images with an SDXL prior.

        Args:
            original_size, crops_coords_top_left, target_size: SDXL's size conditioning (default: the output size,
                no crop), shared by every branch of Eq. C, the domain model's too.
            prompt_embeds / pooled_prompt_embeds, negative_prompt_embeds / negative_pooled_prompt_embeds: precomputed
                embeddings, in pairs, as `StableDiffusionXLPipeline`.
            Everything else as `InDomainPipeline.__call__` (``guidance_scale`` is w_c, ``domain_guidance_scale`` w_d).
        """
        for name in ("image", "prompt_2", "negative_prompt_2", "denoising_end"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}= is not supported by InDomainXLPipeline (see its module docstring)")
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self._add_time_ids = self.time_ids(tuple(original_size or (height, width)), tuple(crops_coords_top_left),
                                           tuple(target_size or (height, width))).to(self._execution_device)

        def pair(emb: torch.Tensor | None, pooled: torch.Tensor | None, name: str) -> dict | None:
            if emb is None:
                return None
            if pooled is None:
                raise ValueError(f"{name} needs pooled_{name} too (SDXL conditions are pairs), as in StableDiffusionXLPipeline")
            return {TEXT: emb, POOLED: pooled}

        try:
            return super().__call__(
                prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                prompt_embeds=pair(prompt_embeds, pooled_prompt_embeds, "prompt_embeds"),
                negative_prompt_embeds=pair(negative_prompt_embeds, negative_pooled_prompt_embeds, "negative_prompt_embeds"),
                **kwargs,
            )
        finally:
            self._add_time_ids = None


register_with_diffusers(InDomainXLPipeline)  # DiffusionPipeline.from_pretrained(saved) finds it
