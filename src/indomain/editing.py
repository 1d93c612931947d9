"""In-domain image editing: SDEdit (img2img), inversion-based editing and inpainting, on the sampling core of
`InDomainPipeline` (one loop for every pipeline).

- ``method="sdedit"`` (Meng et al. 2022), as `StableDiffusionImg2ImgPipeline`: the image's latent is noised to the
  level given by ``strength``, then denoised with decoupled guidance. With ``domain_guidance_scale=0`` the result
  equals diffusers' img2img pipeline (tested).
- ``method="invert"``: the latent is taken back to the same level by DDIM inversion under the prior's
  *unconditional* prediction ``eps_prior(x, ∅)``, then regenerated with DDIM (eta = 0) and decoupled guidance.
  Why this inversion and not null-text or negative-prompt inversion: the decoupled formula's base term is that
  same unconditional prediction, so with every weight at 0 the round trip is exact up to DDIM's inversion error,
  and there is no classifier-free-guidance amplification of that error for null-text inversion to repair. The
  domain and control terms then move the image only as far as their weights say.
- ``mask_image``: inpainting without an inpainting prior. White pixels are regenerated; after every step the
  black (kept) region is reset to the source latent at that noise level (the noised latent for SDEdit, the
  inversion trajectory for ``invert``), and at the end to the source latent itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from .control import check_aspect
from .pipeline import Conditioning, InDomainPipeline, InDomainPipelineOutput
from .pipeline import register_with_diffusers

METHODS = ("sdedit", "invert")
ImageInput = PIL.Image.Image | Sequence[PIL.Image.Image] | torch.Tensor


class InDomainImg2ImgPipeline(InDomainPipeline):
    """Edit images into the domain: `InDomainPipeline` with ``image``, ``strength``, ``method`` and ``mask_image``.

    The same components and loading as `InDomainPipeline` (``InDomainImg2ImgPipeline.from_pretrained(prior,
    domain_unet=...)`` or ``InDomainImg2ImgPipeline.from_pipe(pipe)``).
    """

    inversion_fixed_point_steps: int = 3  # extra prior evaluations per inversion step (0 = plain DDIM inversion)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | None = None,
        strength: float = 0.6,
        method: str = "sdedit",
        mask_image: ImageInput | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.5,
        domain_guidance_scale: float = 2.5,
        weighted_prompts: Sequence[tuple[str, float]] | None = None,
        domain_prompt: str | list[str] | None = None,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        domain_guidance_start: float = 0.0,
        domain_guidance_end: float = 1.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: Any = None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        adapter_conditioning_scale: float | list[float] = 1.0,
        controlnet_to_domain: bool = True,
    ) -> InDomainPipelineOutput | tuple:
        """Edit ``image`` (PIL, list of PIL, or a tensor in [-1, 1]) with decoupled guidance.

        Args:
            strength: how far into the noise the edit starts, in (0, 1]: 0.3 keeps the layout, 0.9 little of it.
            method: ``"sdedit"`` (noise, then denoise) or ``"invert"`` (DDIM inversion, then DDIM regeneration).
            mask_image: white = regenerate, black = keep (inpainting); None edits the whole image.
            control_image: the ControlNet / T2I-Adapter image(s), with the scales and ``controlnet_to_domain`` as
                `InDomainPipeline`'s ``image=`` (the inversion of ``method="invert"`` runs without control).
            Other arguments as in `InDomainPipeline.__call__` (prompt = the edit's control prompt).
        """
        if image is None:
            raise ValueError("image is required: the picture to edit")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")

        # 1. Check inputs; record the weights a callback may change
        pixels = self.image_processor.preprocess(image)
        height, width = pixels.shape[-2:]
        callback_on_step_end_tensor_inputs, options = self.begin_call(
            prompt, negative_prompt, height, width, guidance_scale, domain_guidance_scale, weighted_prompts,
            prompt_embeds, callback_on_step_end, callback_on_step_end_tensor_inputs, guidance_rescale, clip_skip,
            cross_attention_kwargs,
        )

        # 2-3. Encode prompts
        device = self._execution_device
        cond = self.prepare_conditioning(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, domain_prompt, weighted_prompts,
            num_images_per_prompt, clip_skip, device,
            control_window=(control_guidance_start, control_guidance_end),
            domain_window=(domain_guidance_start, domain_guidance_end),
            batch_size=pixels.shape[0],  # without a prompt, one output per image
        )
        cond.options = options
        cond.spatial = self.prepare_spatial_control(
            control_image, height, width, cond, num_images_per_prompt, controlnet_conditioning_scale,
            adapter_conditioning_scale, controlnet_to_domain, False, (control_guidance_start, control_guidance_end), device,
        )

        # 4. Timesteps: the last `strength` of the schedule (DDIM for inversion, the pipeline's scheduler otherwise)
        scheduler = self.scheduler
        if method == "invert":
            self.scheduler = DDIMScheduler.from_config(scheduler.config)
        try:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
            timesteps = self.scheduler.timesteps[start * self.scheduler.order :]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start * self.scheduler.order)
            if len(timesteps) == 0:
                raise ValueError(f"strength {strength} with {num_inference_steps} steps leaves no step to run")

            # 5. Source latents, then the starting point: noised (SDEdit) or inverted
            dtype = cond.negative_prompt_embeds.dtype
            source = self.encode_pixels(pixels.to(device, dtype), cond.n, generator, sample=method == "sdedit")
            if method == "sdedit":
                noise = randn_tensor(source.shape, generator=generator, device=device, dtype=dtype)
                latents = self.scheduler.add_noise(source, noise, timesteps[:1].repeat(cond.n))

                def kept(i: int) -> torch.Tensor:  # the source at the level after step i (the scheduler's own index)
                    last = i + 1 == len(timesteps)
                    return source if last else self.scheduler.add_noise(source, noise, timesteps[i + 1 : i + 2].repeat(cond.n))
            else:
                levels = self.invert(source, timesteps, cond)
                latents = levels[0]

                def kept(i: int) -> torch.Tensor:
                    return levels[i + 1]

            # 6. Denoising loop; with a mask, the kept region follows the source at each level
            mask = None if mask_image is None else self.latent_mask(mask_image, source, cond.n)
            blend = None if mask is None else (lambda i, x: mask * x + (1 - mask) * kept(i))
            latents = self.denoise(latents, timesteps, cond, self._step_kwargs(generator, eta), callback_on_step_end,
                                   callback_on_step_end_tensor_inputs, after_step=blend)
        finally:
            self.scheduler = scheduler

        # 7. Decode
        images = self.latents_to_images(latents, output_type, generator)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return InDomainPipelineOutput(images=images)

    def encode_pixels(self, pixels: torch.Tensor, n: int, generator: Any, sample: bool = True) -> torch.Tensor:
        """The VAE latent of ``pixels`` (B, 3, H, W in [-1, 1]), repeated to ``n`` rows, as SD img2img draws it
        (a posterior sample; ``sample=False`` takes its mode, for a deterministic inversion)."""
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for an effective batch size of {n}")
        if n % pixels.shape[0]:
            raise ValueError(f"cannot share {pixels.shape[0]} images among {n} outputs; pass 1 image or one per output")
        if isinstance(generator, list) and sample:
            pixels = pixels.repeat(n // pixels.shape[0], 1, 1, 1)
            latents = torch.cat([self.vae.encode(pixels[i : i + 1]).latent_dist.sample(generator[i]) for i in range(n)])
        else:
            dist = self.vae.encode(pixels).latent_dist
            latents = dist.sample(generator) if sample else dist.mode()
        latents = latents * self.vae.config.scaling_factor
        return latents.repeat(n // latents.shape[0], 1, 1, 1) if latents.shape[0] < n else latents

    def invert(self, source: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        """DDIM inversion under ``eps_prior(x, ∅)``: ``levels[i]`` is the latent at ``timesteps[i]`` (the input of
        denoising step i), ``levels[-1]`` the source itself."""
        sched = self.scheduler
        alphas = sched.alphas_cumprod.to(source.device)
        ratio = sched.config.num_train_timesteps // sched.num_inference_steps

        def alpha(t: int) -> torch.Tensor:
            return alphas[t] if t >= 0 else sched.final_alpha_cumprod.to(source.device)

        def eps_u(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.call_denoiser(self.unet, x, t, self.model_inputs(cond.negative_prompt_embeds, x.shape[0]), {})

        levels = [source]
        x_prev = source
        for t in self.progress_bar(list(reversed(timesteps)), desc="inverting"):
            a_prev, a_t = alpha(int(t) - ratio), alpha(int(t))
            x = x_prev
            # plain DDIM inversion evaluates eps at x_prev; each fixed-point pass re-evaluates it at the new x_t, so
            # that one DDIM step from x_t lands on x_prev again (Pan et al. 2023, "fixed-point inversion")
            for _ in range(1 + self.inversion_fixed_point_steps):
                eps = eps_u(x, t)
                x0 = (x_prev - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
                x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
            levels.append(x)
            x_prev = x
        return levels[::-1]

    def latent_mask(self, mask_image: ImageInput, source: torch.Tensor, n: int) -> torch.Tensor:
        """The mask at latent resolution, 1 = regenerate, (n, 1, h, w); a mask of another aspect ratio is refused."""
        for mask_one in mask_image if isinstance(mask_image, list) else [mask_image]:
            check_aspect(mask_one, source.shape[-2], source.shape[-1], "the mask")
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True,
                                      do_convert_grayscale=True)
        mask = processor.preprocess(mask_image, height=source.shape[-2] * self.vae_scale_factor,
                                    width=source.shape[-1] * self.vae_scale_factor)
        mask = F.interpolate(mask, size=source.shape[-2:]).to(source.device, source.dtype)
        if n % mask.shape[0]:
            raise ValueError(f"cannot share {mask.shape[0]} masks among {n} outputs")
        return mask.repeat(n // mask.shape[0], 1, 1, 1)


register_with_diffusers(InDomainImg2ImgPipeline)  # DiffusionPipeline.from_pretrained(saved) finds it
