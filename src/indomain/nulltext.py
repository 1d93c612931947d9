"""The null-text domain UNet: a text-free copy of the prior's UNet that learns domain knowledge.

Built from a prior `UNet2DConditionModel` (Cao et al. 2025, §3; official `nulltext_unet.py`):

* ``mode="constant"`` (the paper's model): every cross-attention layer is replaced by
  `ConstantCrossAttention`, which returns a per-layer constant vector held as a buffer, and the
  LayerNorm in front of it (``norm2``) is removed. The UNet then has no text pathway at all.
* ``mode="exact"``: cross-attention is kept and always fed the prior's fixed null-prompt embedding,
  held as a buffer. Slower, but exactly the prior's unconditional prediction at initialisation.

Calibration (the official code never ran it; we do). Each constant is the prior's real cross-attention
output under the empty-prompt embedding, averaged:

* latents: ``batch_size`` (default 4) fixed Gaussian draws ``eps ~ N(0, I)`` from ``torch.Generator``
  seeded with ``seed`` (default 0), at the prior's ``sample_size``. If clean latents are supplied
  (e.g. encoded domain images), each timestep instead sees ``x_t = add_noise(z_0, eps, t)``.
  Unit-variance noise is the exact marginal at ``t = T`` and a data-free stand-in elsewhere, since
  SD latents are scaled to roughly unit variance.
* timesteps: ``num_timesteps`` (default 10) evenly spaced over ``[0, T-1]``, because the cross-attention
  output drifts with ``t`` and the domain model is trained on all ``t``.
* averaging: the arithmetic mean over batch, spatial tokens and timesteps, in float64, then cast to the
  model's dtype; one vector per layer (as the official code's ``mean(dim=[0, 1])``).

The whole procedure is deterministic and recorded in the model config (``calibration``), together with
the prior it came from. For a prior whose null embedding is all zeros (SDXL), the cross-attention keys
and values are zero, so its output is exactly ``to_out``'s bias and the constant mode is exact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

MODES = ("constant", "exact")
# Config keys that must agree between a prior and a domain model for their predictions to be combined.
STRUCTURE_KEYS = (
    "in_channels",
    "out_channels",
    "sample_size",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "layers_per_block",
)


PLAIN_LOADER_MESSAGE = (
    "this folder holds an indomain domain model, not a plain diffusers model: load it with indomain's "
    "NullTextUNet / NullTextTransformer.from_pretrained (or load_domain_model), or write a plain "
    "UNet2DConditionModel with `indomain export`"
)
# Written into every saved domain-model config so that diffusers' plain loaders fail loudly instead of building a
# randomly initialised default model (they ignore unknown keys with a warning): UNet2DConditionModel raises "Must
# provide the same number of `down_block_types` as `up_block_types`" and SD3Transformer2DModel "unknown qk_norm",
# each quoting the message. Our own loaders drop these keys (`RefusePlainLoaders.extract_init_dict`).
PLAIN_LOADER_GUARD = {"down_block_types": [PLAIN_LOADER_MESSAGE], "qk_norm": PLAIN_LOADER_MESSAGE}


class RefusePlainLoaders:
    """Mixin for our `ModelMixin` classes: their saved ``config.json`` makes diffusers' plain model classes refuse it."""

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs: Any) -> Any:
        guard = {k: v for k, v in PLAIN_LOADER_GUARD.items() if config_dict.get(k) == v}
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k not in guard}, **kwargs)

    def to_json_string(self) -> str:
        return json.dumps({**json.loads(super().to_json_string()), **PLAIN_LOADER_GUARD}, indent=2, sort_keys=True) + "\n"


class ConstantCrossAttention(nn.Module):
    """Replaces a cross-attention layer: returns its calibrated null-text output, a constant per layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("null_text_feature", torch.zeros(dim))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Any text input (encoder_hidden_states, masks, LoRA scale, ...) is ignored by design.
        return self.null_text_feature.to(hidden_states.dtype).expand(hidden_states.shape)


def _cross_attention_blocks(unet: nn.Module) -> list[tuple[str, BasicTransformerBlock]]:
    return [
        (name, m)
        for name, m in unet.named_modules()
        if isinstance(m, BasicTransformerBlock) and m.attn2 is not None and getattr(m.attn2, "is_cross_attention", True)
    ]


def json_config(config: Any) -> dict:
    """A plain-JSON copy of a diffusers config (tuples -> lists, private keys dropped)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dict(config).items() if not k.startswith("_")}


def _check_supported(unet_config: dict) -> None:
    if unet_config.get("only_cross_attention"):
        raise ValueError("null-text conversion does not support UNets with only_cross_attention=True")
    if unet_config.get("encoder_hid_dim") is not None or unet_config.get("addition_embed_type") in ("text", "text_image"):
        raise ValueError(
            "null-text conversion supports UNets whose text input enters only through cross-attention "
            f"(got encoder_hid_dim={unet_config.get('encoder_hid_dim')!r}, "
            f"addition_embed_type={unet_config.get('addition_embed_type')!r})"
        )


@torch.no_grad()
def calibrate_null_text_features(
    unet: UNet2DConditionModel,
    null_embedding: torch.Tensor,
    *,
    latents: torch.Tensor | None = None,
    scheduler: Any = None,
    num_timesteps: int = 10,
    batch_size: int = 4,
    seed: int = 0,
    added_cond_kwargs: dict | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Run the prior with the null embedding and average every cross-attention output (see module doc).

    Returns ``{block_name: feature (C,)}`` and a JSON-able record of how it was computed.
    """
    if latents is not None and scheduler is None:
        raise ValueError("calibration with clean latents needs the prior's scheduler to noise them")
    num_train = int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000) or 1000)
    timesteps = torch.linspace(0, num_train - 1, num_timesteps).round().long().tolist()
    device, dtype = unet.device, unet.dtype
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    hw = (size, size) if isinstance(size, int) else size
    generator = torch.Generator("cpu").manual_seed(seed)
    if latents is not None:
        batch_size = latents.shape[0]
        hw = tuple(latents.shape[-2:])
    noise = torch.randn((batch_size, cfg.in_channels, *hw), generator=generator, dtype=torch.float32)
    noise = noise.to(device=device, dtype=dtype)

    blocks = _cross_attention_blocks(unet)
    sums = {name: torch.zeros(block.attn2.to_out[0].out_features, dtype=torch.float64) for name, block in blocks}
    counts = dict.fromkeys(sums, 0)

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            out = output.detach().double().cpu()  # (B, N, C)
            sums[name] += out.reshape(-1, out.shape[-1]).sum(0)
            counts[name] += out.shape[0] * out.shape[1]

        return record

    handles = [block.attn2.register_forward_hook(hook(name)) for name, block in blocks]
    try:
        emb = null_embedding.to(device=device, dtype=dtype).expand(batch_size, -1, -1)
        for t in timesteps:
            tt = torch.tensor(t, device=device)
            x_t = noise if latents is None else scheduler.add_noise(latents.to(device, dtype), noise, tt)
            unet(x_t, tt, encoder_hidden_states=emb, added_cond_kwargs=added_cond_kwargs)
    finally:
        for h in handles:
            h.remove()
    features = {name: sums[name] / counts[name] for name in sums}
    record = {
        "null_prompt": "",
        "latents": "gaussian noise N(0, I)" if latents is None else f"add_noise of {batch_size} supplied clean latents",
        "latent_size": list(hw),
        "batch_size": batch_size,
        "seed": seed,
        "timesteps": timesteps,
        "averaging": "mean over batch, spatial tokens and timesteps (float64)",
    }
    return features, record


class NullTextUNet(RefusePlainLoaders, ModelMixin, ConfigMixin):
    """A text-free copy of a prior `UNet2DConditionModel` (the paper's null-text domain model).

    It keeps the original UNet as ``self.unet`` with cross-attention made constant (``mode="constant"``)
    or fed a fixed null embedding (``mode="exact"``). ``forward`` accepts and ignores any text input,
    so it is a drop-in noise predictor ``(x_t, t) -> prediction``. Build it with `NullTextUNet.from_prior`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict,
        mode: str = "constant",
        null_embedding_shape: Sequence[int] | None = None,
        prediction_type: str = "epsilon",
        prior: str | None = None,
        calibration: dict | None = None,
        lora: dict | None = None,
        pooled_dim: int | None = None,
    ) -> None:
        # `lora` only records the adapter settings of an adapter-only folder (see `indomain.loading.save_lora`).
        # `pooled_dim`: SDXL's pooled text embedding enters through `added_cond_kwargs`; it is held constant too.
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        _check_supported(unet_config)
        self.unet = UNet2DConditionModel.from_config(unet_config)
        if mode == "constant":
            for _, block in _cross_attention_blocks(self.unet):
                block.attn2 = ConstantCrossAttention(block.attn2.to_out[0].out_features)
                block.norm2 = nn.Identity()  # its output only fed the removed query projection
        else:
            if null_embedding_shape is None:
                raise ValueError("mode='exact' needs null_embedding_shape, e.g. [1, 77, 768]")
            self.register_buffer("null_embedding", torch.zeros(*null_embedding_shape))
        if unet_config.get("addition_embed_type") == "text_time":
            if pooled_dim is None:
                raise ValueError("an SDXL-style UNet (addition_embed_type='text_time') needs pooled_dim, the size of "
                                 "its pooled text embedding")
            self.register_buffer("null_text_embeds", torch.zeros(1, pooled_dim))

    @classmethod
    def from_prior(
        cls,
        unet: UNet2DConditionModel,
        null_embedding: torch.Tensor,
        *,
        mode: str = "constant",
        prediction_type: str = "epsilon",
        prior: str | None = None,
        scheduler: Any = None,
        latents: torch.Tensor | None = None,
        num_timesteps: int = 10,
        batch_size: int = 4,
        seed: int = 0,
        added_cond_kwargs: dict | None = None,
        null_pooled: torch.Tensor | None = None,
    ) -> "NullTextUNet":
        """Convert a prior UNet; in constant mode, calibrate from the empty-prompt embedding.

        Args:
            unet: the prior's UNet (left unchanged).
            null_embedding: the prior's empty-prompt text embedding, shape (1, L, D).
            mode: "constant" (the paper) or "exact" (keep cross-attention, feed the fixed null embedding).
            prediction_type: the prior scheduler's prediction type, recorded so mismatches are caught.
            prior: where the prior came from (hub id or path), recorded in the config.
            scheduler, latents, num_timesteps, batch_size, seed: calibration inputs (module docstring).
            null_pooled: an SDXL prior's pooled empty-prompt embedding, shape (1, P) (all zeros with SDXL's
                ``force_zeros_for_empty_prompt``); held as the buffer ``null_text_embeds``. The time ids stay inputs;
                calibration uses ``sample_size * 8`` px, no crop.
        """
        config = json_config(unet.config)
        null_embedding = null_embedding.detach()
        if null_embedding.dim() != 3 or null_embedding.shape[0] != 1:
            raise ValueError(f"null_embedding must have shape (1, L, D), got {tuple(null_embedding.shape)}")
        sdxl = config.get("addition_embed_type") == "text_time"
        if sdxl and (null_pooled is None or null_pooled.dim() != 2 or null_pooled.shape[0] != 1):
            raise ValueError("an SDXL-style prior needs null_pooled, its pooled empty-prompt embedding of shape (1, P)")
        model = cls(
            unet_config=config,
            mode=mode,
            null_embedding_shape=list(null_embedding.shape) if mode == "exact" else None,
            prediction_type=prediction_type,
            prior=prior or unet.config.get("_name_or_path") or None,
            pooled_dim=null_pooled.shape[1] if sdxl else None,
        )
        if sdxl:
            model.null_text_embeds.copy_(null_pooled.detach())
            if added_cond_kwargs is None:
                px = [unet.config.sample_size * 8] * 2
                added_cond_kwargs = {"text_embeds": null_pooled.expand(batch_size, -1).to(unet.device, unet.dtype),
                                     "time_ids": torch.tensor([px + [0, 0] + px], dtype=unet.dtype,
                                                              device=unet.device).expand(batch_size, -1)}
        own = model.unet.state_dict()
        model.unet.load_state_dict({k: v for k, v in unet.state_dict().items() if k in own}, strict=False)
        missing = [k for k in own if k not in unet.state_dict() and not k.endswith("null_text_feature")]
        if missing:
            raise ValueError(f"prior UNet lacks weights the null-text UNet needs: {missing[:5]}")
        if mode == "exact":
            model.null_embedding.copy_(null_embedding)
            model.register_to_config(calibration={"null_prompt": "", "note": "exact mode: no constants"})
        else:
            features, record = calibrate_null_text_features(
                unet,
                null_embedding,
                latents=latents,
                scheduler=scheduler,
                num_timesteps=num_timesteps,
                batch_size=batch_size,
                seed=seed,
                added_cond_kwargs=added_cond_kwargs,
            )
            blocks = dict(_cross_attention_blocks(model.unet))
            for name, feature in features.items():
                blocks[name].attn2.null_text_feature.copy_(feature.to(torch.float32))
            model.register_to_config(calibration=record)
        model.to(unet.device)
        if unet.dtype != torch.float32:
            model.to(dtype=unet.dtype)
        return model

    def set_attention_slice(self, slice_size: Any) -> None:
        """Sliced attention in the wrapped UNet (what ``pipe.enable_attention_slicing`` calls on every component)."""
        self.unet.set_attention_slice(slice_size)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        added_cond_kwargs: dict | None = None,
        timestep_cond: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        cross_attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple:
        """Predict noise (or v) for ``sample`` at ``timestep``; ``encoder_hidden_states`` is ignored.

        An SDXL-style model takes its ``time_ids`` in ``added_cond_kwargs``; any ``text_embeds`` there is replaced by
        the null pooled embedding."""
        if self.config.mode == "exact":
            text = self.null_embedding.to(sample.dtype).expand(sample.shape[0], -1, -1)
        else:
            text = None
        if hasattr(self, "null_text_embeds"):
            if not added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError("this SDXL domain model needs added_cond_kwargs={'time_ids': ...} (original size, "
                                 "crop, target size per image), as StableDiffusionXLPipeline passes them")
            pooled = self.null_text_embeds.to(sample.dtype).expand(sample.shape[0], -1)
            added_cond_kwargs = {**added_cond_kwargs, "text_embeds": pooled}
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=text,
            added_cond_kwargs=added_cond_kwargs,
            timestep_cond=timestep_cond,
            down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
            down_intrablock_additional_residuals=down_intrablock_additional_residuals,
            cross_attention_kwargs=cross_attention_kwargs,
            return_dict=return_dict,
        )


class NullTextTransformer(RefusePlainLoaders, ModelMixin, ConfigMixin):
    """The null-text domain model of a flow-matching MMDiT prior (`SD3Transformer2DModel`, Stable Diffusion 3).

    The prior's transformer with its text input fixed to the prior's empty-prompt embeddings, held as buffers
    (``null_embedding`` (1, L, D) and ``null_pooled`` (1, P)): the "exact" mode. There is no constant mode. In the
    MMDiT the text tokens are a second stream that attends to the image tokens in every block, so a text stream
    held at calibrated per-layer constants is not the prior's null prediction; `experiments/nulltext_gap.py
    --family sd3` measures how far it is (docs/NULLTEXT.md), and it is not offered.
    ``forward`` accepts and ignores any text input. Build it with `NullTextTransformer.from_prior`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        transformer_config: dict,
        null_embedding_shape: Sequence[int],
        pooled_dim: int,
        mode: str = "exact",
        prediction_type: str = "flow",
        prior: str | None = None,
        calibration: dict | None = None,
        lora: dict | None = None,
    ) -> None:
        super().__init__()
        from diffusers import SD3Transformer2DModel

        if mode != "exact":
            raise ValueError(f"a transformer domain model has only mode='exact', got {mode!r} (see NullTextTransformer)")
        self.transformer = SD3Transformer2DModel.from_config(transformer_config)
        self.register_buffer("null_embedding", torch.zeros(*null_embedding_shape))
        self.register_buffer("null_pooled", torch.zeros(1, pooled_dim))

    @property
    def unet(self) -> nn.Module:
        """The wrapped denoiser (the name the trainer's LoRA and save code use for every domain model)."""
        return self.transformer

    @classmethod
    def from_prior(cls, transformer: nn.Module, null_embedding: torch.Tensor, null_pooled: torch.Tensor, *,
                   prior: str | None = None, mode: str = "exact", **_: Any) -> "NullTextTransformer":
        """Copy a prior `SD3Transformer2DModel` and fix its text input to the empty prompt's
        ``null_embedding`` (1, L, D) and ``null_pooled`` (1, P) (from the prior's three text encoders)."""
        if null_embedding.dim() != 3 or null_embedding.shape[0] != 1:
            raise ValueError(f"null_embedding must have shape (1, L, D), got {tuple(null_embedding.shape)}")
        if null_pooled.dim() != 2 or null_pooled.shape[0] != 1:
            raise ValueError(f"null_pooled must have shape (1, P), got {tuple(null_pooled.shape)}")
        model = cls(json_config(transformer.config), list(null_embedding.shape), null_pooled.shape[1], mode=mode,
                    prior=prior or transformer.config.get("_name_or_path") or None,
                    calibration={"null_prompt": "", "note": "exact mode: the prior's empty-prompt embeddings"})
        model.transformer.load_state_dict(transformer.state_dict())
        model.null_embedding.copy_(null_embedding.detach())
        model.null_pooled.copy_(null_pooled.detach())
        model.to(transformer.device)
        return model if transformer.dtype == torch.float32 else model.to(dtype=transformer.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: Any = None,
        *,
        pooled_projections: Any = None,
        joint_attention_kwargs: dict | None = None,
        block_controlnet_hidden_states: list | None = None,
        return_dict: bool = True,
    ) -> Any:
        """The velocity for ``hidden_states`` at ``timestep`` (a (B,) tensor); text inputs are ignored."""
        b, dtype = hidden_states.shape[0], hidden_states.dtype
        return self.transformer(
            hidden_states=hidden_states, timestep=timestep,
            encoder_hidden_states=self.null_embedding.to(dtype).expand(b, -1, -1),
            pooled_projections=self.null_pooled.to(dtype).expand(b, -1),
            joint_attention_kwargs=joint_attention_kwargs, block_controlnet_hidden_states=block_controlnet_hidden_states,
            return_dict=return_dict,
        )


@contextlib.contextmanager
def prior_text_pathway(domain: NullTextUNet, prior_unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """The domain model with the prior's text pathway put back, for the duration of the block.

    Inside, ``domain.unet`` is a text-conditioned UNet: every cross-attention layer and the LayerNorm in front of it
    (``attn2``, ``norm2``) are the prior's own modules (shared, not copied), every other weight is the domain model's.
    Its prediction ``eps_dt(x, c)`` answers a prompt the way a model trained *in* the domain would, which is what the
    ``domain-text`` guidance form uses for its control term (`indomain.guidance.domain_text`). On leaving, the domain
    model's own modules are restored, also after an error. Only a `NullTextUNet` of a UNet prior of the same structure.
    """
    if not isinstance(domain, NullTextUNet):
        raise TypeError(f"the prior's text pathway can be put back only into a NullTextUNet, got {type(domain).__name__}")
    if hasattr(domain, "null_text_embeds"):
        raise ValueError("the domain-text form supports SD 1.x / 2.x domain models (text through cross-attention only), "
                         "not SDXL's (pooled text)")
    ours, theirs = dict(_cross_attention_blocks(domain.unet)), dict(_cross_attention_blocks(prior_unet))
    if set(ours) != set(theirs):
        raise ValueError("domain model does not fit the prior: their cross-attention layers differ")
    saved = {name: (block.attn2, block.norm2) for name, block in ours.items()}
    try:
        for name, block in ours.items():
            block.attn2, block.norm2 = theirs[name].attn2, theirs[name].norm2
        yield domain.unet
    finally:
        for name, block in ours.items():
            block.attn2, block.norm2 = saved[name]


TRANSFORMER_STRUCTURE_KEYS = (
    "in_channels", "out_channels", "sample_size", "patch_size", "num_layers", "attention_head_dim",
    "num_attention_heads", "joint_attention_dim", "pooled_projection_dim", "caption_projection_dim",
)


def check_compatible(prior_unet: nn.Module, domain_unet: nn.Module, prior_prediction_type: str) -> None:
    """Raise a ValueError naming the first mismatch between a prior's denoiser and a domain model.

    The domain model is a `NullTextUNet` (a `NullTextTransformer` for a transformer prior) or, for
    conventional fine-tunes, a text-conditioned model of the prior's class.
    """
    keys = STRUCTURE_KEYS
    if isinstance(domain_unet, (NullTextUNet, NullTextTransformer)):
        dom_cfg = getattr(domain_unet.config, "unet_config", None) or domain_unet.config.transformer_config
    elif isinstance(domain_unet, UNet2DConditionModel) or type(domain_unet).__name__ == type(prior_unet).__name__:
        dom_cfg = domain_unet.config
    else:
        raise TypeError(f"the domain model must be a NullTextUNet, a NullTextTransformer or a model of the prior's class "
                        f"({type(prior_unet).__name__}), got {type(domain_unet).__name__}")
    if not isinstance(prior_unet, UNet2DConditionModel):
        keys = TRANSFORMER_STRUCTURE_KEYS
        if isinstance(domain_unet, NullTextUNet):
            raise ValueError(f"domain model does not fit the prior: a NullTextUNet cannot join a {type(prior_unet).__name__} prior")
    elif isinstance(domain_unet, NullTextTransformer):
        raise ValueError("domain model does not fit the prior: a NullTextTransformer cannot join a UNet prior")
    prior_cfg = prior_unet.config
    if isinstance(prior_unet, UNet2DConditionModel):
        keys = (*keys, "addition_embed_type")
    for key in keys:
        a, b = prior_cfg.get(key), dom_cfg.get(key)
        a = list(a) if isinstance(a, (tuple, list)) else a
        b = list(b) if isinstance(b, (tuple, list)) else b
        if a != b:
            name = {"in_channels": "latent channels", "sample_size": "sample size"}.get(key, key)
            raise ValueError(f"domain model does not fit the prior: {name} ({key}) is {b!r} in the domain model but {a!r} in the prior")
    if isinstance(domain_unet, (NullTextUNet, NullTextTransformer)) and domain_unet.config.prediction_type != prior_prediction_type:
        raise ValueError(
            f"domain model predicts {domain_unet.config.prediction_type!r} but the prior's scheduler predicts "
            f"{prior_prediction_type!r}; their predictions cannot be combined"
        )


class DomainModels(RefusePlainLoaders, ModelMixin, ConfigMixin):
    """Extra domain models of one `InDomainPipeline` (its optional ``extra_domains`` component), each with its own
    default weight: Eq. C then has one domain term per model, ``+ Σ_j w_j (eps_domain_j(x) − eps_prior(x, ∅))``.

    One registered component, so the models move with ``.to()``, are offloaded as one unit by
    ``enable_model_cpu_offload`` (every call goes through ``forward(index, ...)``, where the hook sits) and are
    written by ``save_pretrained`` (one config listing each model's config, one weights file). Build it with
    `DomainModels.from_models`; every model is a `NullTextUNet`.
    """

    @register_to_config
    def __init__(self, domain_configs: Sequence[dict], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if weights is not None and len(weights) != len(domain_configs):
            raise ValueError(f"DomainModels got {len(domain_configs)} models but {len(weights)} weights")
        self.models = nn.ModuleList([NullTextUNet.from_config(dict(c)) for c in domain_configs])

    @classmethod
    def from_models(cls, models: Sequence[NullTextUNet], weights: Sequence[float] | None = None) -> "DomainModels":
        """Wrap existing models (no copy); ``weights`` default to 1 each."""
        from accelerate import init_empty_weights

        for i, m in enumerate(models):
            if not isinstance(m, NullTextUNet):
                raise TypeError(f"extra domain model {i} must be a NullTextUNet, got {type(m).__name__}")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        configs = [{k: v for k, v in m.config.items() if not k.startswith("_")} for m in models]
        with init_empty_weights():  # skip building throw-away weights
            out = cls(configs, weights)
        out.models = nn.ModuleList(models)
        return out

    def __len__(self) -> int:
        return len(self.models)

    def set_attention_slice(self, slice_size: Any) -> None:
        """Sliced attention in every model (``pipe.enable_attention_slicing`` reaches the extra domains too)."""
        for model in self.models:
            model.set_attention_slice(slice_size)

    def forward(self, index: int, sample: torch.Tensor, timestep: Any, encoder_hidden_states: Any = None, **kwargs: Any) -> Any:
        """Model ``index``'s prediction (see `NullTextUNet.forward`)."""
        return self.models[index](sample, timestep, encoder_hidden_states, **kwargs)
