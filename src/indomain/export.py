"""`indomain export`: a domain model as files that diffusers, ComfyUI and A1111 read without indomain.

    indomain export DOMAIN --out DIR                              # a plain diffusers UNet2DConditionModel folder
    indomain export DOMAIN --out DIR --format single-file         # one .safetensors in the original SD (LDM) layout
    indomain export LORA_DOMAIN --prior PRIOR --out DIR           # a LoRA domain model needs its prior's weights
    indomain export LORA_DOMAIN --format lora|kohya --out DIR     # its adapter alone: diffusers' or kohya's LoRA file

The constant cross-attention of a null-text domain model (`NullTextUNet`, ``mode="constant"``) is exactly a plain
cross-attention layer whose query, key, value and output weights are zero and whose output bias is the constant:
the attention then sums zero vectors (q = k = v = 0 for any finite text), the output projection adds its bias to
an exact zero, and the block adds that bias to its input as the constant model adds the constant. The ``norm2`` the
constant model removed comes back as an identity-initialised LayerNorm whose output reaches only the zeroed query,
so it cannot change a prediction. An SDXL model also holds its pooled text constant: the columns of
``add_embedding.linear_1`` that read the pooled text are zeroed and their product with the constant is folded
into that layer's bias (exact when the constant is zero, as SDXL's empty prompt is; float rounding otherwise).
So the exported UNet predicts what the domain model does for any text input; `tests/test_export.py` checks it.

Not exportable, refused with the reason: ``mode="exact"`` (the fixed null embedding varies by token, which no
input-independent bias can reproduce) and SD3's `NullTextTransformer` (its text stream attends to the image in
every block).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

from .cliargs import add_options, from_args, option
from .outputs import to_json

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel

FORMATS = ("diffusers", "single-file", "lora", "kohya")
SINGLE_FILE = "domain_unet.safetensors"
KOHYA_FILE = "domain_lora.safetensors"
class ExportError(ValueError):
    """A domain model that has no exact plain form (or a folder that is no domain model)."""


def refusal(class_name: str | None, mode: str | None) -> str | None:
    """Why a domain model of this class and null-text mode has no exact plain form (None: it has one)."""
    if class_name == "NullTextTransformer":
        return ("an SD3 domain model (NullTextTransformer) has no exact plain SD3Transformer2DModel form: its fixed "
                "empty-prompt text stream attends to the image in every block, which weights alone cannot reproduce; "
                "use it through indomain (InDomainSD3Pipeline)")
    if class_name == "NullTextUNet" and mode == "exact":
        return ("a mode='exact' domain model has no exact plain UNet form: its fixed null embedding differs per token, "
                "which no input-independent weights reproduce; train with --mode constant to export")
    return None


def plain_unet(model: Any) -> "UNet2DConditionModel":
    """The `UNet2DConditionModel` that predicts exactly what a constant-mode `NullTextUNet` does, for any text input
    (module docstring). A text-conditioned fine-tune (already plain) is returned as it is."""
    import torch
    from diffusers import UNet2DConditionModel

    from .nulltext import NullTextTransformer, NullTextUNet, _cross_attention_blocks

    if isinstance(model, UNet2DConditionModel):
        return model
    if not isinstance(model, (NullTextUNet, NullTextTransformer)):
        raise ExportError(f"cannot export a {type(model).__name__}; expected a NullTextUNet domain model")
    reason = refusal(type(model).__name__, model.config.mode)
    if reason:
        raise ExportError(reason)
    unet = UNet2DConditionModel.from_config(dict(model.config.unet_config))
    own = model.unet.state_dict()
    target = unet.state_dict()
    with torch.no_grad():
        for key, value in target.items():
            if key in own:
                value.copy_(own[key])
        for name, block in _cross_attention_blocks(unet):
            for param in block.attn2.parameters():  # q, k, v, output weights (and any norm in attn2): zero
                param.zero_()
            block.attn2.to_out[0].bias.copy_(own[f"{name}.attn2.null_text_feature"])
            for pname, param in block.norm2.named_parameters():  # identity LayerNorm: weight 1, bias 0
                param.fill_(1.0 if pname.endswith("weight") else 0.0)
        if hasattr(model, "null_text_embeds"):
            linear = unet.add_embedding.linear_1
            pooled = model.null_text_embeds.double()[0]
            p = pooled.shape[0]
            folded = linear.weight[:, :p].double() @ pooled
            linear.bias.copy_((linear.bias.double() + folded).to(linear.bias.dtype))
            linear.weight[:, :p] = 0
    unet.to(model.device)
    return (unet if model.dtype == unet.dtype else unet.to(dtype=model.dtype)).eval()


def _resnet_names() -> dict[str, str]:
    return {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
            "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_prefixes(config: Any) -> list[tuple[str, str]]:
    """(diffusers prefix, original SD prefix) pairs of a `UNet2DConditionModel` config, the layout of the CompVis
    ``openaimodel.UNetModel`` that A1111 and ComfyUI read (without the ``model.diffusion_model.`` prefix)."""
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    attn_down = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    attn_up = [t.startswith("CrossAttn") for t in config.get("up_block_types") or ()]  # a ControlNet has none
    pairs = [("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."),
             ("time_embedding.linear_2.", "time_embed.2."), ("add_embedding.linear_1.", "label_emb.0.0."),
             ("add_embedding.linear_2.", "label_emb.0.2."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    k = 1
    for i in range(n):
        for j in range(layers[i]):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0."))
            if attn_down[i]:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1."))
            k += 1
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{k}.0.op."))
            k += 1
    k = 0
    up_layers = list(reversed(layers))
    for i in range(len(attn_up)):
        for j in range(up_layers[i] + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0."))
            if attn_up[i]:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1."))
            if j == up_layers[i] and i < n - 1:
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{k}.{2 if attn_up[i] else 1}.conv."))
            k += 1
    return pairs


def ldm_unet_state_dict(unet: "UNet2DConditionModel", prefix: str = "model.diffusion_model.") -> dict[str, "torch.Tensor"]:
    """A `UNet2DConditionModel`'s weights under the original Stable Diffusion key names (diffusers' single-file
    loader, `from_single_file`, reads them back: `tests/test_export.py`)."""
    return _ldm_names(unet.state_dict(), unet.config, prefix)


def _ldm_names(state: dict[str, "torch.Tensor"], config: Any, prefix: str) -> dict[str, "torch.Tensor"]:
    """UNet-named weights (a UNet's, or a ControlNet's UNet-like part) under their original SD names."""
    pairs = sorted(ldm_prefixes(config), key=lambda p: -len(p[0]))
    resnet = _resnet_names()
    out = {}
    for key, value in state.items():
        match = next(((d, o) for d, o in pairs if key.startswith(d)), None)
        if match is None:
            raise ExportError(f"no original-SD name for UNet weight {key!r} (an architecture the exporter does not know)")
        d, o = match
        rest = key[len(d):]
        if ".resnets." in d or d.startswith("mid_block.resnets"):
            head, _, tail = rest.partition(".")
            rest = f"{resnet.get(head, head)}.{tail}"
        out[prefix + o + rest] = value.detach().contiguous().cpu()
    return out


def ldm_controlnet_state_dict(controlnet: Any, prefix: str = "control_model.") -> dict[str, "torch.Tensor"]:
    """A `ControlNetModel`'s weights in the original ControlNet layout (``control_model.input_blocks...``,
    ``zero_convs``, ``middle_block_out``, ``input_hint_block``), as the ``control_*.safetensors`` files A1111 and
    ComfyUI load; diffusers' ``ControlNetModel.from_single_file`` reads it back."""
    hint = {"controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
            "controlnet_cond_embedding.conv_out.": "input_hint_block.14."}
    hint.update({f"controlnet_cond_embedding.blocks.{j}.": f"input_hint_block.{2 * (j + 1)}."
                 for j in range(len(controlnet.controlnet_cond_embedding.blocks))})
    hint.update({f"controlnet_down_blocks.{i}.": f"zero_convs.{i}.0." for i in range(len(controlnet.controlnet_down_blocks))})
    hint["controlnet_mid_block."] = "middle_block_out.0."
    own, rest = {}, {}
    for key, value in controlnet.state_dict().items():
        match = next((k for k in hint if key.startswith(k)), None)
        if match is None:
            rest[key] = value
        else:
            own[prefix + hint[match] + key[len(match):]] = value.detach().contiguous().cpu()
    # the rest (conv_in, time embedding, down and mid blocks) has the UNet's names and layout
    return {**_ldm_names(rest, controlnet.config, prefix), **own}


def kohya_state_dict(folder: str | Path) -> dict[str, "torch.Tensor"]:
    """A LoRA domain model's adapter in kohya's single-file layout (``lora_unet_<module>.lora_down/lora_up.weight``
    and ``.alpha``), the LoRA format A1111 and ComfyUI read; diffusers reads it with ``load_lora_weights`` too."""
    import torch
    from safetensors.torch import load_file

    from .loading import LORA_WEIGHTS, lora_prefix

    file = Path(folder) / LORA_WEIGHTS
    prefix = lora_prefix(file)
    if prefix == "transformer":
        raise ExportError("kohya's LoRA layout is for UNet priors (SD 1.x/2.x, SDXL); an SD3 adapter stays in "
                          "diffusers' format (--format lora)")
    lora = _lora_settings(folder)
    out = {}
    for key, value in load_file(file).items():
        key = key.removeprefix("unet.")
        module, _, kind = key.rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        if kind == "A.weight":
            out[f"{name}.lora_down.weight"] = value.contiguous()
            rank = value.shape[0]
            out[f"{name}.alpha"] = torch.tensor(float(lora.get("lora_alpha") or rank))
        elif kind == "B.weight":
            out[f"{name}.lora_up.weight"] = value.contiguous()
        else:
            raise ExportError(f"adapter weight {key!r} has no kohya form (only lora_A / lora_B weights do)")
    return out


def _lora_settings(folder: str | Path) -> dict:
    import json

    from .loading import LORA_WEIGHTS

    config = json.loads(Path(folder, "config.json").read_text())
    if config.get("lora"):
        return config["lora"]
    adapter = Path(folder, "adapter_config.json")
    if adapter.is_file():
        return json.loads(adapter.read_text())
    raise ExportError(f"{folder} has {LORA_WEIGHTS} but no LoRA settings (config.json 'lora' or adapter_config.json)")


def ldm_vae_state_dict(vae: Any, prefix: str = "first_stage_model.") -> dict[str, "torch.Tensor"]:
    """An `AutoencoderKL`'s weights under the original Stable Diffusion key names (``encoder.down.0.block.0...``;
    the mid-block attention as 1x1 convolutions), which `from_single_file` reads back."""
    import re

    n = len(vae.config.block_out_channels)
    rules = [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
        (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
    ]
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if ".mid.attn_1." in new:
            head, _, tail = new.partition(".mid.attn_1.")
            tail = next((tail.replace(a, b, 1) for a, b in attention.items() if tail.startswith(a)), tail)
            new = f"{head}.mid.attn_1.{tail}"
            if value.dim() == 2:  # linear in diffusers, a 1x1 convolution in the original
                value = value[:, :, None, None]
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[prefix + new] = value.detach().contiguous().cpu()
    return out


def ldm_checkpoint(unet: Any, vae: Any = None, text_encoder: Any = None) -> dict[str, "torch.Tensor"]:
    """A whole single-file checkpoint as A1111 and ComfyUI's checkpoint loaders read it: UNet (``model.diffusion_model.``),
    VAE (``first_stage_model.``) and, for a CLIP text encoder (SD 1.x), ``cond_stage_model.transformer.``."""
    state = ldm_unet_state_dict(unet)
    if vae is not None:
        state.update(ldm_vae_state_dict(vae))
    if text_encoder is not None:
        if type(text_encoder).__name__ != "CLIPTextModel":
            raise ExportError(f"the single-file layout here covers SD 1.x's CLIPTextModel; this prior's text encoder is "
                              f"a {type(text_encoder).__name__} (export without --prior for the UNet alone)")
        for key, value in text_encoder.state_dict().items():
            if key.endswith("position_ids"):
                continue
            key = key if key.startswith("text_model.") else f"text_model.{key}"  # the original layout's names
            state[f"cond_stage_model.transformer.{key}"] = value.detach().contiguous().cpu()
    return state


def _text_model_keys(encoder: Any) -> dict[str, "torch.Tensor"]:
    """A CLIP encoder's weights under transformers' ``text_model.*`` names (newer transformers flatten
    `CLIPTextModel`), without the position-id buffer."""
    out = {}
    for key, value in encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"
        out[key] = value.detach().contiguous().cpu()
    return out


def open_clip_state_dict(encoder: Any, prefix: str = "conditioner.embedders.1.model.") -> dict[str, "torch.Tensor"]:
    """A CLIP text encoder in OpenCLIP's layout (SDXL's second text encoder in the original checkpoint; SD 2.x's with
    ``prefix="cond_stage_model.model."``):
    fused ``in_proj`` attention, ``ln_1 / mlp.c_fc`` names and a transposed ``text_projection``; diffusers'
    ``convert_open_clip_checkpoint`` reads it back."""
    import torch

    hf = _text_model_keys(encoder)
    out = {prefix + "token_embedding.weight": hf.pop("text_model.embeddings.token_embedding.weight"),
           prefix + "positional_embedding": hf.pop("text_model.embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": hf.pop("text_model.final_layer_norm.weight"),
           prefix + "ln_final.bias": hf.pop("text_model.final_layer_norm.bias")}
    if "text_projection.weight" in hf:  # SDXL's encoder has one; SD 2.x's CLIPTextModel none
        out[prefix + "text_projection"] = hf.pop("text_projection.weight").T.contiguous()
    names = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj.",
             "self_attn.out_proj.": "attn.out_proj."}
    layers = sorted({int(k.split(".")[3]) for k in hf if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([hf.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"])
        for key in [k for k in hf if k.startswith(src)]:
            rest = key[len(src):]
            head = next((h for h in names if rest.startswith(h)), None)
            if head is None:
                raise ExportError(f"no OpenCLIP name for text encoder weight {key!r}")
            out[dst + names[head] + rest[len(head):]] = hf.pop(key)
    if hf:
        raise ExportError(f"no OpenCLIP name for text encoder weights {sorted(hf)[:3]}")
    return out


def sdxl_checkpoint(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any) -> dict[str, "torch.Tensor"]:
    """A whole SDXL checkpoint in the original (SGM) layout A1111 and ComfyUI load and diffusers'
    ``StableDiffusionXLPipeline.from_single_file`` reads: UNet, VAE, CLIP-L (``conditioner.embedders.0.transformer.``)
    and OpenCLIP-G (``conditioner.embedders.1.model.``)."""
    state = {**ldm_unet_state_dict(unet), **ldm_vae_state_dict(vae)}
    state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in _text_model_keys(text_encoder).items()
                  if not k.startswith("text_projection")})
    state.update(open_clip_state_dict(text_encoder_2))
    return state


def mmdit_state_dict(transformer: Any, prefix: str = "model.diffusion_model.") -> dict[str, "torch.Tensor"]:
    """An `SD3Transformer2DModel`'s weights in Stability's original MMDiT layout (``joint_blocks.N.x_block`` /
    ``context_block``, fused ``qkv``, ``final_layer``): the inverse of diffusers'
    ``convert_sd3_transformer_checkpoint_to_diffusers``, which `from_single_file` runs."""
    import torch

    sd = {k: v.detach().contiguous().cpu() for k, v in transformer.state_dict().items()}

    def swap(w: "torch.Tensor") -> "torch.Tensor":  # diffusers orders adaLN (scale, shift), the original (shift, scale)
        a, b = w.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    top = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj.": "x_embedder.proj.",
           "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
           "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
           "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
           "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
           "context_embedder.": "context_embedder.", "proj_out.": "final_layer.linear."}
    block = {"attn.to_out.0.": "x_block.attn.proj.", "attn.to_add_out.": "context_block.attn.proj.",
             "attn.norm_q.": "x_block.attn.ln_q.", "attn.norm_k.": "x_block.attn.ln_k.",
             "attn.norm_added_q.": "context_block.attn.ln_q.", "attn.norm_added_k.": "context_block.attn.ln_k.",
             "attn2.to_out.0.": "x_block.attn2.proj.", "attn2.norm_q.": "x_block.attn2.ln_q.",
             "attn2.norm_k.": "x_block.attn2.ln_k.", "norm1.linear.": "x_block.adaLN_modulation.1.",
             "norm1_context.linear.": "context_block.adaLN_modulation.1.", "ff.net.0.proj.": "x_block.mlp.fc1.",
             "ff.net.2.": "x_block.mlp.fc2.", "ff_context.net.0.proj.": "context_block.mlp.fc1.",
             "ff_context.net.2.": "context_block.mlp.fc2."}
    fused = {"attn.to_": "x_block.attn.qkv.", "attn.add_": "context_block.attn.qkv.", "attn2.to_": "x_block.attn2.qkv."}
    last = transformer.config.num_layers - 1
    out = {}
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = swap(sd.pop(f"norm_out.linear.{kind}"))
        for i in range(transformer.config.num_layers):
            b = f"transformer_blocks.{i}."
            for src, dst in fused.items():
                parts = [f"{b}{src}{p}.{kind}" if src.endswith("to_") else f"{b}{src}{p[0]}_proj.{kind}"
                         for p in ("q", "k", "v")]
                if parts[0] in sd:
                    out[f"joint_blocks.{i}.{dst}{kind}"] = torch.cat([sd.pop(p) for p in parts])
            if i == last:  # the last context block is pre-only: its adaLN is swapped like the final layer's
                key = f"{b}norm1_context.linear.{kind}"
                out[f"joint_blocks.{i}.context_block.adaLN_modulation.1.{kind}"] = swap(sd.pop(key))
    for key in list(sd):
        match = next(((s, d) for s, d in top.items() if key.startswith(s)), None)
        if match is None and key.startswith("transformer_blocks."):
            i, rest = key.split(".", 2)[1:]
            match = next(((f"transformer_blocks.{i}.{s}", f"joint_blocks.{i}.{d}") for s, d in block.items()
                          if rest.startswith(s)), None)
        if match is None:
            raise ExportError(f"no original MMDiT name for SD3 transformer weight {key!r}")
        out[match[1] + key[len(match[0]):]] = sd.pop(key)
    return {prefix + k: v for k, v in out.items()}


def sd3_checkpoint(transformer: Any, vae: Any, text_encoder: Any, text_encoder_2: Any) -> dict[str, "torch.Tensor"]:
    """A whole SD3 checkpoint in Stability's single-file layout (``sd3_medium_incl_clips.safetensors``): MMDiT, VAE and
    the two CLIPs under ``text_encoders.clip_l/clip_g.transformer.`` (no T5), as diffusers'
    ``StableDiffusion3Pipeline.from_single_file`` reads it. That loader gives CLIP-L an identity ``text_projection``
    (the file has none), so a prior whose CLIP-L projection is not the identity does not round-trip exactly."""
    state = {**mmdit_state_dict(transformer), **ldm_vae_state_dict(vae)}
    for name, encoder in (("clip_l", text_encoder), ("clip_g", text_encoder_2)):
        keys = _text_model_keys(encoder)
        if name == "clip_l":
            keys.pop("text_projection.weight", None)
        state.update({f"text_encoders.{name}.transformer.{k}": v for k, v in keys.items()})
    return state


def export_domain(domain: str | Path, out: str | Path, *, fmt: str = "diffusers", prior: str | None = None,
                  allow_pickle: bool = False) -> list[Path]:
    """Write ``domain`` (a folder `indomain train` wrote) as a plain model into ``out``; return the files written."""
    from safetensors.torch import save_file

    from .loading import is_lora_folder, load_domain_model, load_prior_components

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt in ("lora", "kohya"):
        return _export_lora(Path(domain), Path(out), fmt)
    prior_unet = prior_parts = None
    if is_lora_folder(domain) and prior is None:
        raise ValueError(f"{domain} is a LoRA domain model: pass --prior, the prior it was trained on (its base weights)")
    if prior is not None:
        prior_parts = load_prior_components(prior, allow_pickle=allow_pickle, need_text=fmt == "single-file")
        prior_unet = prior_parts.get("unet")
        if prior_unet is None:
            raise ExportError("an SD3 domain model has no exact plain form (see `indomain export --help`)")
    model = load_domain_model(domain, prior_unet, allow_pickle=allow_pickle)
    unet = plain_unet(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = {"source": str(domain), "format": fmt, "class": type(model).__name__,
              "prior": getattr(model.config, "prior", None), "prediction_type": getattr(model.config, "prediction_type", None)}
    if fmt == "diffusers":
        unet.save_pretrained(out, safe_serialization=True)
        written = [out / "config.json", out / "diffusion_pytorch_model.safetensors"]
    else:
        # with an SD 1.x --prior: a whole checkpoint (the domain UNet with the prior's VAE and CLIP), as A1111 loads it.
        # SD 2.x and SDXL store OpenCLIP text encoders in the original layout, which is not written here: UNet only.
        whole = (prior_parts is not None and prior_parts["family"].name == "sd"
                 and unet.config.cross_attention_dim != 1024)
        state = (ldm_checkpoint(unet, prior_parts["vae"], prior_parts.get("text_encoder")) if whole else
                 ldm_unet_state_dict(unet))
        source["contents"] = "unet + vae + text encoder (SD 1.x layout)" if whole else "unet"
        save_file(state, out / SINGLE_FILE, metadata={"format": "pt", "indomain": to_json(source)})
        unet.save_config(out)  # the diffusers config: from_single_file(..., config=DIR, subfolder="") needs no hub
        written = [out / SINGLE_FILE, out / "config.json"]
    (out / "export.json").write_text(to_json(source, indent=2) + "\n")
    return [*written, out / "export.json"]


def _export_lora(domain: Path, out: Path, fmt: str) -> list[Path]:
    """The adapter alone, in diffusers' pipeline LoRA format or kohya's: no prior needed."""
    import shutil

    from safetensors.torch import save_file

    from .loading import LORA_WEIGHTS, lora_prefix

    if not (domain / LORA_WEIGHTS).is_file():
        raise ExportError(f"{domain} holds no LoRA adapter ({LORA_WEIGHTS}); --format {fmt} is for domain models "
                          "trained with --lora-rank (use --format diffusers or single-file)")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "kohya":
        save_file(kohya_state_dict(domain), out / KOHYA_FILE, metadata={"format": "pt"})
        written = out / KOHYA_FILE
    elif lora_prefix(domain / LORA_WEIGHTS) is None:  # indomain 0.1's unprefixed file: rewrite it with the prefix
        from safetensors.torch import load_file

        save_file({f"unet.{k}": v for k, v in load_file(domain / LORA_WEIGHTS).items()}, out / LORA_WEIGHTS,
                  metadata={"format": "pt"})
        written = out / LORA_WEIGHTS
    else:
        written = Path(shutil.copy2(domain / LORA_WEIGHTS, out / LORA_WEIGHTS))
    record = {"source": str(domain), "format": fmt, "lora": _lora_settings(domain),
              "note": "the adapter of a null-text domain model: it gives the domain model's predictions on the "
                      "null-text base (`indomain export --format diffusers` of the same folder with --prior writes "
                      "the fused model); on the plain prior its cross-attention still reads the text"}
    (out / "export.json").write_text(to_json(record, indent=2) + "\n")
    return [written, out / "export.json"]


@dataclass
class ExportConfig:
    """Every setting of `indomain export` (each field is also its argument)."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("write a domain model as a plain diffusers UNet or a single-file checkpoint (for "
                                   "diffusers, ComfyUI, A1111)")

    domain: str = option(help="domain model folder written by `indomain train`", positional=True)
    out: str = option(help="output folder (new or empty)")
    format: str = option("diffusers", "diffusers: a UNet2DConditionModel folder; single-file: one .safetensors in the "
                         "original SD UNet layout (model.diffusion_model.*); lora / kohya: a LoRA domain model's adapter "
                         "alone, in diffusers' pipeline LoRA format (unet.* keys) or kohya's (lora_unet_*)",
                         choices=FORMATS)
    prior: str | None = option(None, "the prior folder: needed for a LoRA domain model's base weights; with --format "
                               "single-file and an SD 1.x prior it makes a whole checkpoint (the domain UNet + the "
                               "prior's VAE and CLIP text encoder), as A1111's and ComfyUI's checkpoint loaders read it "
                               "(SD 2.x / SDXL: the UNet alone)")
    allow_pickle: bool = option(False, "allow pickle weights in the prior (weights_only loading)")


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("export", help=help, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, ExportConfig)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    return export(from_args(ExportConfig, args))


def export(config: ExportConfig) -> int:
    """`indomain export`: the refusal checked before ``--out`` is claimed, then the files written."""
    from .outputs import claim_output_dir, read_json_object

    config_file = Path(config.domain, "config.json")
    if not config_file.is_file():
        raise ValueError(f"{config.domain}: not a domain model folder (no config.json)")
    model_config = read_json_object(config_file, "a domain model's config")
    reason = (refusal(model_config.get("_class_name"), model_config.get("mode"))
              if config.format in ("diffusers", "single-file") else None)
    if reason:  # before --out is claimed: a refused export leaves nothing behind
        raise ExportError(reason)
    out = claim_output_dir(config.out, "export", inputs={"DOMAIN": config.domain, "--prior": config.prior},
                           overwrite_flag=None)
    files = export_domain(config.domain, out, fmt=config.format, prior=config.prior, allow_pickle=config.allow_pickle)
    print(f"wrote {', '.join(f.name for f in files)} to {out}")
    return 0
