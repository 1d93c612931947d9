r"""Score distillation (SDS; DreamFusion, Poole et al. 2023) with the guidance-decoupled prediction of Eq. A.

For rendered images ``x = g(ψ)`` with VAE latents ``z = s · E(x)``, a timestep ``t`` and noise ``ε``:

.. math::

    z_t = \sqrt{\bar\alpha_t}\, z + \sqrt{1 - \bar\alpha_t}\, \varepsilon, \qquad
    \nabla_z \mathcal{L}_{SDS} = w(t)\, (\hat\varepsilon(z_t; t, y) - \varepsilon),

    \hat\varepsilon = \varepsilon_{prior}(z_t, \varnothing)
        + w_d\, (\varepsilon_{domain}(z_t) - \varepsilon_{prior}(z_t, \varnothing))
        + w_c\, (\varepsilon_{prior}(z_t, y) - \varepsilon_{prior}(z_t, \varnothing))

(docs/PAPER §2.8). ``y`` is the prompt, made view-dependent from the camera's azimuth. The UNets run without
gradient; the gradient reaches ``ψ`` through the VAE encoder and the renderer only.

**Guidance-scale convention.** ``w_c`` and ``w_d`` multiply ``(ε_k − ε_u)`` around the prior's unconditional
prediction, as diffusers and stable-dreamfusion (``ε_u + s (ε_c − ε_u)``). threestudio writes
``ε_c + s (ε_c − ε_u)``, which is ``ε_u + (s + 1)(ε_c − ε_u)``: its ``guidance_scale=100`` is ``w_c = 101`` here.

The object follows the contract of threestudio's guidance modules (``stable_diffusion_guidance.py``): settings in a
dataclass (`SDSConfig`), ``__call__(rgb, prompt, elevation, azimuth, camera_distances)`` returning a dict whose
``loss_sds`` the caller adds to its other losses, and ``update_step`` for annealing the timestep range. The loss is
threestudio's reparameterisation ``0.5 ‖z − sg(z − g)‖² / B`` with ``g = w(t)(ε̂ − ε)``: its value is meaningless
but its gradient is exactly ``∂L/∂z = g / B`` (the mean of the per-view SDS losses; ``g`` itself for one view).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from .guidance import DOMAIN, PRIOR, GuidancePlan, MultiGuidance, decoupled
from .pipeline import InDomainPipeline

WEIGHTINGS = ("sds", "uniform", "fantasia3d")
VIEWS = ("front", "side", "back", "overhead")


@dataclass
class SDSConfig:
    """Every setting of the score-distillation guidance."""

    guidance_scale: float = 25.0  # w_c on the prompt (diffusers' convention; threestudio's s is w_c − 1)
    domain_guidance_scale: float = 0.0  # w_d on the null-text domain model (0: the prior alone, plain SDS)
    min_step_percent: float = 0.02  # t ~ U[min, max] · T, as DreamFusion/threestudio
    max_step_percent: float = 0.98
    max_step_percent_end: float | None = None  # anneal max_step_percent linearly to this by the last step (None: fixed)
    weighting: str = "sds"  # w(t): "sds" = 1 − ᾱ_t (DreamFusion), "uniform" = 1, "fantasia3d" = sqrt(ᾱ_t)(1 − ᾱ_t)
    view_dependent: bool = True  # append the view to the prompt, chosen from the camera's azimuth and elevation
    view_template: str = "{view} view of {prompt}"
    front_threshold: float = 45.0  # |azimuth| < this: "front"; > 180 − back_threshold: "back"; else "side"
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0  # elevation > this: "overhead"
    negative_prompt: str = ""  # the prior's unconditional branch (as in Stable Diffusion)
    grad_clip: float | None = None  # clip g element-wise to [−c, c] (None: no clipping)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_step_percent <= self.max_step_percent <= 1.0:
            raise ValueError(f"need 0 <= min_step_percent <= max_step_percent <= 1, got {self.min_step_percent}, "
                             f"{self.max_step_percent}")
        if self.max_step_percent_end is not None and not self.min_step_percent <= self.max_step_percent_end <= 1.0:
            raise ValueError(f"max_step_percent_end must lie in [min_step_percent, 1], got {self.max_step_percent_end}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        for name in ("guidance_scale", "domain_guidance_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")


def view_of(azimuth: float, elevation: float, config: SDSConfig) -> str:
    """threestudio's view rule: overhead above ``overhead_threshold``, else front / side / back by |azimuth|."""
    if elevation > config.overhead_threshold:
        return "overhead"
    az = abs((azimuth + 180.0) % 360.0 - 180.0)
    if az < config.front_threshold:
        return "front"
    if az > 180.0 - config.back_threshold:
        return "back"
    return "side"


def view_prompts(prompt: str, elevation: torch.Tensor, azimuth: torch.Tensor, config: SDSConfig) -> list[str]:
    """One prompt per camera: ``view_template`` filled with the camera's view, or ``prompt`` itself."""
    if not config.view_dependent:
        return [prompt] * len(azimuth)
    return [config.view_template.format(view=view_of(float(a), float(e), config), prompt=prompt)
            for a, e in zip(azimuth.tolist(), elevation.tolist())]


class ScoreDistillation:
    """SDS guidance from an `InDomainPipeline`'s frozen prior, VAE, text encoder and (optional) domain model.

    The models are frozen (``requires_grad_(False)``). Text embeddings are cached per prompt.
    """

    def __init__(self, pipe: InDomainPipeline, config: SDSConfig | None = None) -> None:
        self.config = config or SDSConfig()
        pipe.check_domain_weight(self.config.domain_guidance_scale)
        self.pipe = pipe
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.domain_unet):
            if module is not None:
                module.requires_grad_(False).eval()
        self.prediction_type = pipe.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"SDS needs an epsilon or v_prediction prior, got prediction_type={self.prediction_type!r}")
        self.num_train_timesteps = pipe.scheduler.config.num_train_timesteps
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(torch.float32)  # (T,), on the CPU
        self._embeddings: dict[str, torch.Tensor] = {}
        self.set_min_max_steps(self.config.min_step_percent, self.config.max_step_percent)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def set_min_max_steps(self, min_step_percent: float, max_step_percent: float) -> None:
        self.min_step = int(self.num_train_timesteps * min_step_percent)
        self.max_step = int(self.num_train_timesteps * max_step_percent)

    def update_step(self, epoch: int, global_step: int, total_steps: int | None = None) -> None:
        """threestudio's hook, called once per optimisation step: anneal the largest timestep if configured."""
        end = self.config.max_step_percent_end
        if end is None or not total_steps:
            return
        frac = min(max(global_step / total_steps, 0.0), 1.0)
        self.set_min_max_steps(self.config.min_step_percent,
                               self.config.max_step_percent + frac * (end - self.config.max_step_percent))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) for integer timesteps ``t`` (B,), shaped (B, 1, 1, 1)."""
        a = self.alphas_cumprod[t.cpu()].to(self.device)
        w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia3d": a.sqrt() * (1 - a)}[self.config.weighting]
        return w.view(-1, 1, 1, 1)

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (len(prompts), L, D) from the prior's encoder, each distinct prompt encoded once."""
        missing = sorted({p for p in prompts if p not in self._embeddings})
        if missing:
            with torch.no_grad():
                for p, e in zip(missing, self.pipe.encode_text(missing, self.device)):
                    self._embeddings[p] = e
        return torch.stack([self._embeddings[p] for p in prompts])

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """VAE latents ``s · mean(E(2 rgb − 1))`` of images (B, 3, H, W) in [0, 1], differentiable w.r.t. ``rgb``."""
        vae = self.pipe.vae
        posterior = vae.encode(rgb.to(device=self.device, dtype=vae.dtype) * 2 - 1).latent_dist
        return posterior.mean * vae.config.scaling_factor

    def plan(self, cond: torch.Tensor, null: torch.Tensor) -> GuidancePlan:
        """Eq. A: the prior's unconditional branch, the domain term and the control term."""
        text_domain = isinstance(self.pipe.domain_unet, UNet2DConditionModel)  # a fine-tune: rectified CFG's condition
        return decoupled(self.config.domain_guidance_scale, self.config.guidance_scale,
                         cond if self.config.guidance_scale != 0 else None, null,
                         domain_cond=cond if text_domain else None)

    @torch.no_grad()
    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """The multi-guidance prediction ε̂(z_t; t, y) of Eq. A, in epsilon space."""
        def per_row(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            return tt.repeat(x.shape[0] // tt.shape[0])  # MultiGuidance stacks branches as [z_t] * n: t follows

        def call(model: Any) -> Callable:  # as the pipeline calls it (`families.call_denoiser`)
            return lambda x, tt, emb: self.pipe.call_denoiser(model, x, per_row(x, tt),
                                                              self.pipe.model_inputs(emb, x.shape[0]), {})

        models = {PRIOR: call(self.pipe.unet), DOMAIN: call(self.pipe.domain_unet)}
        pred = MultiGuidance(models, self.plan(cond, null))(z_t, t).pred
        if self.prediction_type == "v_prediction":  # ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) z_t
            a = self.alphas_cumprod[t.cpu()].to(z_t.device).view(-1, 1, 1, 1)
            pred = a.sqrt() * pred + (1 - a).sqrt() * z_t
        return pred

    def __call__(
        self,
        rgb: torch.Tensor,
        prompt: str,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor | None = None,
        rgb_as_latents: bool = False,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """The SDS loss of rendered images ``rgb`` (B, 3, H, W) in [0, 1] (or latents, with ``rgb_as_latents``).

        ``elevation``/``azimuth`` (B,) in degrees choose each view's prompt; ``camera_distances`` is accepted for
        threestudio's signature and unused. ``t`` (B,) and ``noise`` (like the latents) may be fixed; otherwise they
        are drawn (from ``generator``, on the CPU). Returns ``loss_sds``, ``grad_norm`` (of g), ``timesteps``,
        ``min_step``, ``max_step`` and ``prompts``.
        """
        # 1. Latents: the only part of the graph that carries gradient
        z = rgb.to(self.device) if rgb_as_latents else self.encode_images(rgb)  # (B, 4, h, w)
        b = z.shape[0]
        if len(azimuth) != b or len(elevation) != b:
            raise ValueError(f"got {b} images but {len(azimuth)} azimuths and {len(elevation)} elevations")
        # 2. Timesteps and noise
        if t is None:
            t = torch.randint(self.min_step, self.max_step + 1, (b,), generator=generator)
        t = t.to(self.device, torch.long)
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, dtype=torch.float32)
        noise = noise.to(self.device, z.dtype)
        # 3. Conditions: view-dependent prompts, the unconditional (negative) prompt
        prompts = view_prompts(prompt, elevation, azimuth, self.config)
        cond = self.embed(prompts).to(self.device)
        null = self.embed([self.config.negative_prompt]).to(self.device).expand_as(cond)
        # 4. ε̂ at z_t = sqrt(ᾱ_t) z + sqrt(1 − ᾱ_t) ε, without gradient
        a = self.alphas_cumprod[t.cpu()].to(self.device, z.dtype).view(-1, 1, 1, 1)
        z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
        eps_hat = self.predict(z_t, t, cond, null)
        # 5. g = w(t)(ε̂ − ε); loss with ∂loss/∂z = g / B
        grad = torch.nan_to_num(self.weight(t) * (eps_hat - noise))
        if self.config.grad_clip is not None:
            grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        target = (z - grad).detach()
        loss = 0.5 * torch.nn.functional.mse_loss(z, target, reduction="sum") / b
        return {"loss_sds": loss, "grad_norm": grad.norm(), "timesteps": t, "min_step": self.min_step,
                "max_step": self.max_step, "prompts": prompts}
