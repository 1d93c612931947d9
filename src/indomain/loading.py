"""Opening priors and domain models from disk, safely: the one place that loads them.

- `load_prior_components`: a prior's denoiser, VAE, noise scheduler and (optionally) text encoders, for
  each family of `indomain.families`, after `indomain.safeload.check_prior` has checked the folder; used by the trainer.
  `InDomainPipeline.from_pretrained` runs the same check before diffusers' own loader.
- `load_single_file_prior`: a single-file ``.safetensors`` prior (+ a diffusers config folder), through diffusers'
  ``from_single_file``; `load_prior_components` accepts one too.
- `load_model`: any other diffusers model (ControlNet, T2I-Adapter, control UNet, VAE) from a folder or a
  single ``.safetensors`` file (+ config), pickle refused, errors that name the flag.
- `load_domain_model`: a domain model folder as `indomain train` writes it: a `NullTextUNet`, an
  adapter-only (LoRA) `NullTextUNet`, or a text-conditioned fine-tune; used by the pipeline and evaluator.
- The adapter-only folder format: `save_lora` / `load_lora` / `is_lora_folder`.
- The guidance stored with a domain model by `indomain tune` (``tuned_guidance.json``): `read_tuned_guidance` /
  `write_tuned_guidance`; `indomain generate` samples with it when no form or weight is given.

Weights load from safetensors; pickle files only with ``allow_pickle`` (see `indomain.safeload`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from .nulltext import NullTextTransformer, NullTextUNet, json_config
from .outputs import read_json_object, to_json
from .safeload import HUB_ID, check_prior, check_safe, read_safetensors


def load_prior_components(prior: str | os.PathLike, *, allow_pickle: bool = False, need_text: bool = True,
                          config: str | os.PathLike | None = None) -> dict:
    """The prior's denoiser (``unet``, or ``transformer`` for SD3), ``vae`` and training ``noise_scheduler`` (DDPM, or
    the prior's flow-matching scheduler), its ``family`` and ``model_index``; with ``need_text``, every text encoder
    and tokenizer under their component names (``text_encoder``, ``tokenizer_2``, ...).

    ``prior`` may be a single ``.safetensors`` file with ``config`` a diffusers folder of the same model
    (`load_single_file_prior`); the noise scheduler then comes from that folder."""
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from .families import family_of, read_model_index

    check_prior(prior, allow_pickle)
    if Path(prior).expanduser().is_file():
        if config is None:
            raise ValueError(f"prior {str(prior)!r} is a single file: pass config=DIR / --prior-config DIR, a diffusers "
                             "folder of the same model (its configs, tokenizers and scheduler)")
        components, family = load_single_file_prior(prior, config)
        scheduler_cls = FlowMatchEulerDiscreteScheduler if family.objective == "flow" else DDPMScheduler
        names = (*family.text_encoders, *family.optional_text_encoders)
        text = {k: components.get(k) for n in names for k in (n, family.tokenizer(n))} if need_text else {}
        return {"family": family, "model_index": read_model_index(config), family.denoiser: components[family.denoiser],
                "vae": components["vae"], "noise_scheduler": scheduler_cls.from_pretrained(config, subfolder="scheduler"),
                **text}
    if config is not None:
        raise ValueError(f"config= (--prior-config) is for a single-file prior; {str(prior)!r} is not a file")
    safe = None if allow_pickle else True
    index = read_model_index(prior)
    family = family_of(index)
    denoiser_cls = SD3Transformer2DModel if family.denoiser == "transformer" else UNet2DConditionModel
    scheduler_cls = FlowMatchEulerDiscreteScheduler if family.objective == "flow" else DDPMScheduler
    parts = {
        "family": family,
        "model_index": index,
        family.denoiser: denoiser_cls.from_pretrained(prior, subfolder=family.denoiser, use_safetensors=safe),
        "vae": AutoencoderKL.from_pretrained(prior, subfolder="vae", use_safetensors=safe),
        "noise_scheduler": scheduler_cls.from_pretrained(prior, subfolder="scheduler"),
    }
    if need_text:
        for name in (*family.text_encoders, *family.optional_text_encoders):
            entry = index.get(name) or [None, None]
            if entry[1] is None:  # an optional encoder the prior leaves out (SD3 without T5)
                parts[name] = parts[family.tokenizer(name)] = None
                continue
            # the class model_index.json names (CLIPTextModelWithProjection for SDXL's second encoder, T5 for SD3);
            # AutoModel otherwise (any encoder a prior ships: the emoji prior's is MiniLM)
            cls = getattr(transformers, entry[1], None) if entry[0] == "transformers" else None
            parts[family.tokenizer(name)] = transformers.AutoTokenizer.from_pretrained(prior, subfolder=family.tokenizer(name))
            parts[name] = (cls or transformers.AutoModel).from_pretrained(prior, subfolder=name, use_safetensors=safe)
    return parts


def load_single_file_prior(file: str | os.PathLike, config: str | os.PathLike | None = None,
                           dtype: torch.dtype | None = None, **kwargs: Any) -> tuple[dict, Any]:
    """The components of a single-file ``.safetensors`` prior (A1111 / ComfyUI style) and its `Family`, through
    diffusers' ``from_single_file`` of the family's pipeline. ``config`` is a diffusers folder (or hub id) of the same
    architecture; its configs, tokenizers and scheduler are used, its weights are not needed. Without it diffusers
    looks its default config up on the hub (from the local cache when offline)."""
    import diffusers

    from .families import SINGLE_FILE_PIPELINES, detect_family

    check_prior(file)
    family = detect_family(file, config)
    pipeline_cls = getattr(diffusers, SINGLE_FILE_PIPELINES[family.name])
    extra = {"safety_checker": None, "requires_safety_checker": False} if family.name == "sd" else {}
    if config is not None:
        extra["config"] = str(config)
        kwargs.setdefault("local_files_only", Path(config).expanduser().is_dir())
        from .families import read_model_index

        hub = {k: kwargs[k] for k in ("local_files_only", "token", "revision", "cache_dir") if k in kwargs}
        # components the config leaves out (SD3 without T5): diffusers' single-file loader skips them but then
        # reports them missing unless they are passed as None
        extra.update({name: None for name, entry in read_model_index(config, **hub).items()
                      if isinstance(entry, list) and entry[:1] == [None] and name not in kwargs})
    if dtype is not None:
        extra["torch_dtype"] = dtype
    try:
        pipe = pipeline_cls.from_single_file(str(file), **extra, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        hint = "" if config is not None else (" (a single file carries no configs: pass config=DIR / --prior-config DIR, "
                                              "a diffusers folder of the same model; nothing is downloaded offline)")
        raise ValueError(f"single-file prior {str(file)!r} could not be opened as a {family.title} checkpoint{hint}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    unfilled = [name for name, module in pipe.components.items() if isinstance(module, torch.nn.Module) and _unfilled(module)]
    if unfilled:  # diffusers leaves weights the file lacks on the meta device; fail here, not at the first step
        raise ValueError(f"single-file prior {str(file)!r}: the file has no weights for {', '.join(unfilled)} (or "
                         "they do not fit the config's architecture); pass a checkpoint that holds them")
    return dict(pipe.components), family


def _unfilled(module: torch.nn.Module) -> bool:
    """Whether a model holds weights on the meta device: diffusers' single-file loaders leave there what the file
    lacks."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def load_model(cls: Any, path: str | os.PathLike, flag: str = "model", *, allow_pickle: bool = False,
               dtype: torch.dtype | None = None, config: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """A diffusers model (``ControlNetModel``, ``T2IAdapter``, ``UNet2DConditionModel``) from a local folder, or from a
    single ``.safetensors`` file through ``cls.from_single_file`` with ``config`` a local diffusers folder of the same
    architecture (its ``config.json``, or a pipeline folder's ``unet/`` / ``controlnet/``). The file may be in the
    original layout (``control_model.*`` / ``model.diffusion_model.*``) or diffusers'. Pickle is refused (single files:
    always; folders: unless ``allow_pickle``); errors name ``flag`` (the CLI flag, e.g. ``--controlnet``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return _load_single_file_model(cls, path, flag, dtype, config)
    if config is not None:
        raise ValueError(f"{flag}-config is for a single-file {flag} (a .safetensors file); {path} is not a file")
    if not Path(path, "config.json").is_file() and Path(path, "unet", "config.json").is_file() and cls is UNet2DConditionModel:
        kwargs["subfolder"] = "unet"  # a pipeline folder: its UNet
    if not Path(path, kwargs.get("subfolder", ""), "config.json").is_file():
        raise ValueError(f"{flag} {path}: not a model folder (no config.json) and not a .safetensors file")
    check_safe(path, allow_pickle)
    try:
        return cls.from_pretrained(path, use_safetensors=None if allow_pickle else True, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{flag} {path}: cannot be loaded as a {cls.__name__}: {err}") from None


def _load_single_file_model(cls: Any, file: Path, flag: str, dtype: torch.dtype | None,
                            config: str | os.PathLike | None) -> Any:
    """`load_model` of one ``.safetensors`` file (A1111 / ComfyUI style): configs from the local folder ``config``."""
    if file.suffix != ".safetensors":  # as for priors: a single pickle file is never read, --allow-pickle or not
        raise ValueError(f"{flag} {file}: a single-file model that is not .safetensors; only safetensors single files "
                         "are read (convert it with a tool you trust, or pass a diffusers folder)")
    if not hasattr(cls, "from_single_file"):
        raise ValueError(f"{flag} {file}: a {cls.__name__} cannot be read from a single file; pass its diffusers folder")
    if config is None:
        raise ValueError(f"{flag} {file}: a single file carries no config; pass {flag}-config DIR, a diffusers folder "
                         f"of the same {cls.__name__} (its weights are not read)")
    config = Path(config).expanduser()
    sub = next((s for s in ("", "controlnet" if "ControlNet" in cls.__name__ else "unet")
                if (config / s / "config.json").is_file()), None)
    if sub is None:
        raise ValueError(f"{flag}-config {config}: no config.json there (a diffusers {cls.__name__} folder, or a "
                         "pipeline folder with one)")
    check_safe(file)  # its header must be readable
    try:
        model = cls.from_single_file(str(file), config=str(config), subfolder=sub or None, local_files_only=True,
                                     torch_dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ValueError(f"{flag} {file}: cannot be loaded as a single-file {cls.__name__} with {flag}-config {config}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if _unfilled(model):
        raise ValueError(f"{flag} {file}: the file does not hold every weight of the {cls.__name__} that {flag}-config "
                         f"{config} describes (a different architecture, or another model's file)")
    return model


def resolve_domain_path(path: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local domain model folder, or a hub id resolved to its folder in the hub's local cache.

    Hub ids download through `huggingface_hub.snapshot_download` (only from the local cache when
    ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``); a folder holding pickle weights is then refused
    like a local one.
    """
    local = Path(path).expanduser()
    if local.exists() or not HUB_ID.match(str(path)) or str(path).startswith("."):
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path), **hub_kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise FileNotFoundError(
            f"domain model {str(path)!r} is neither a local folder nor a hub id found in the hub's cache "
            f"({type(e).__name__}); download it first or pass a folder"
        ) from None


TUNED_GUIDANCE_FILE = "tuned_guidance.json"  # in a domain model's folder: the guidance `indomain tune` chose for it


def read_tuned_guidance(domain: str | os.PathLike) -> dict[str, Any] | None:
    """The guidance `indomain tune` stored with the domain model in folder ``domain`` (``guidance_form``,
    ``domain_guidance_scale``, ``guidance_scale``, the goal and what was measured), or None when it stored none.

    A file that is not such a record raises ValueError naming the file, rather than sampling with guessed weights.
    """
    from .guidance import DEFAULT_WEIGHTS

    path = Path(domain).expanduser() / TUNED_GUIDANCE_FILE
    if not path.is_file():
        return None
    record = read_json_object(path, "the guidance `indomain tune` stored with a domain model")
    form = record.get("guidance_form")
    weights = [record.get(k) for k in ("domain_guidance_scale", "guidance_scale")]
    if form not in DEFAULT_WEIGHTS or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                              and math.isfinite(w) for w in weights):
        raise ValueError(f"{path}: not a tuned guidance record: it needs guidance_form (one of {sorted(DEFAULT_WEIGHTS)}) "
                         f"and finite domain_guidance_scale and guidance_scale, got {form!r} and {weights}; rerun "
                         "`indomain tune`, or delete the file to sample with the default weights")
    return record


def write_tuned_guidance(domain: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Store ``record`` (see `read_tuned_guidance`) in the domain model's folder, atomically, and check it reads back."""
    from .outputs import atomic_path

    path = Path(domain).expanduser() / TUNED_GUIDANCE_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(record, indent=2) + "\n", encoding="utf-8")
    read_tuned_guidance(domain)
    return path


def load_domain_model(
    path: str | os.PathLike, prior_unet: UNet2DConditionModel | None = None, allow_pickle: bool = False,
    dtype: torch.dtype | None = None, **kwargs: Any
) -> NullTextUNet | UNet2DConditionModel:
    """Load a domain model folder written by `indomain train`, with an error naming the problem.

    Accepted: a full `NullTextUNet`; an adapter-only (LoRA) `NullTextUNet`, which needs ``prior_unet``
    for its base weights; or a text-conditioned `UNet2DConditionModel` (a conventional fine-tune).
    """
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ValueError(
            f"domain model {str(path)!r} is not a model folder: expected a directory with config.json and "
            "diffusion_pytorch_model.safetensors, as written by `indomain train` or NullTextUNet.save_pretrained"
        )
    cls_name = read_json_object(config_file, "a domain model's config").get("_class_name")
    classes = {c.__name__: c for c in (NullTextUNet, UNet2DConditionModel, NullTextTransformer)}
    if cls_name not in (*classes, "SD3Transformer2DModel"):
        raise ValueError(f"domain model {str(path)!r} holds a {cls_name!r}, not a NullTextUNet, NullTextTransformer "
                         "or a fine-tuned UNet2DConditionModel / SD3Transformer2DModel")
    check_safe(path, allow_pickle)  # pickle refused, every safetensors header readable
    if is_lora_folder(path):
        if prior_unet is None:
            raise ValueError(f"domain model {str(path)!r} holds LoRA adapters only; it needs the prior's UNet to load")
        return load_lora(path, prior_unet)
    if cls_name == "SD3Transformer2DModel":
        from diffusers import SD3Transformer2DModel

        classes[cls_name] = SD3Transformer2DModel
    cls = classes[cls_name]
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls.from_pretrained(path, use_safetensors=None if allow_pickle else True, **kwargs)


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_adapter file (LoRA config in its metadata)
BUFFERS_FILE = "null_text_buffers.safetensors"  # the calibrated constants, which are not LoRA weights
OLD_LORA_FILE = "lora_weights.safetensors"  # indomain 0.1's single-file format, still read


def save_adapter(denoiser: Any, folder: str | Path, adapter_name: str = "default") -> Path:
    """Write a denoiser's peft adapter as diffusers' pipeline LoRA file, ``pytorch_lora_weights.safetensors``: keys
    under ``unet.`` (``transformer.`` for SD3) and the `LoraConfig` in its metadata, so that a diffusers pipeline's
    ``load_lora_weights(folder)`` finds them (a file without the prefix loads nothing there)."""
    from diffusers import SD3Transformer2DModel, StableDiffusionPipeline
    from diffusers.loaders import SD3LoraLoaderMixin
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    layers = get_peft_model_state_dict(denoiser, adapter_name=adapter_name)
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in denoiser.peft_config[adapter_name].to_dict().items()}
    if isinstance(denoiser, SD3Transformer2DModel):
        SD3LoraLoaderMixin.save_lora_weights(folder, transformer_lora_layers=layers, weight_name=LORA_WEIGHTS,
                                             transformer_lora_adapter_metadata=metadata)
    else:
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_WEIGHTS,
                                                  unet_lora_adapter_metadata=metadata)
    return folder / LORA_WEIGHTS


def lora_prefix(file: str | Path) -> str | None:
    """The component prefix of a diffusers LoRA file (``unet`` / ``transformer``), or None for indomain 0.1's
    unprefixed adapter files."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
    for prefix in ("unet", "transformer"):
        if keys and all(k.startswith(prefix + ".") for k in keys):
            return prefix
    return None


def save_lora(model: NullTextUNet, folder: str | Path) -> None:
    """Save an adapter-only null-text domain model in diffusers' LoRA format.

    The folder holds ``pytorch_lora_weights.safetensors`` (`save_adapter`: keys under ``unet.``),
    ``adapter_config.json`` (peft's `LoraConfig`), the calibrated constants in ``null_text_buffers.safetensors``
    and the model ``config.json``. It loads with `load_lora(folder, prior_unet)`, which takes the base weights
    from the prior. A diffusers pipeline's ``load_lora_weights(folder)`` loads the adapter too; it gives the domain
    model's predictions on the null-text base (`indomain export` writes that base, or the fused model), and on the
    plain prior it is the prior with the adapter, its text cross-attention intact (README, "Use it in ComfyUI / A1111").
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_config = model.unet.peft_config["default"]
    config = dict(model.config)
    config["lora"] = {"r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
                      "target_modules": sorted(peft_config.target_modules)}
    (folder / "config.json").write_text(to_json({"_class_name": type(model).__name__, **json_config(config)}, indent=2))
    save_adapter(model.unet, folder)
    peft_config.save_pretrained(folder)  # adapter_config.json, for peft tools
    save_file({k: v.detach().contiguous().cpu() for k, v in model.named_buffers()}, folder / BUFFERS_FILE)


def is_lora_folder(folder: str | Path) -> bool:
    """An adapter-only null-text folder (new or old format); a merged fine-tune that also ships its adapter is not."""
    folder = Path(folder)
    if (folder / OLD_LORA_FILE).is_file():
        return True
    if not (folder / LORA_WEIGHTS).is_file() or not (folder / "config.json").is_file():
        return False
    return read_json_object(folder / "config.json", "a domain model's config").get("_class_name") in (NullTextUNet.__name__,
                                                                                 NullTextTransformer.__name__)


def load_lora(folder: str | Path, prior_unet: UNet2DConditionModel) -> NullTextUNet:
    """Rebuild a domain model from an adapter-only folder and the prior's UNet, LoRA fused into the weights."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    folder = Path(folder)
    config = read_json_object(folder / "config.json", "a domain model's config")
    lora = config.pop("lora", None)
    if not isinstance(lora, dict):
        raise ValueError(f"LoRA domain model {str(folder)!r}: config.json has no LoRA settings ('lora')")
    init = {k: v for k, v in config.items() if not k.startswith("_")}
    model = (NullTextTransformer if config.get("_class_name") == NullTextTransformer.__name__ else NullTextUNet)(**init)
    own = model.unet.state_dict()
    prior_state = prior_unet.state_dict()
    mismatch = [k for k in own if k in prior_state and prior_state[k].shape != own[k].shape]
    if mismatch:
        raise ValueError(f"LoRA domain model {str(folder)!r} does not fit the prior: shape mismatch at {mismatch[0]}")
    model.unet.load_state_dict({k: v for k, v in prior_state.items() if k in own}, strict=False)
    buffers = dict(model.named_buffers())
    if (folder / OLD_LORA_FILE).is_file():  # indomain 0.1: "lora.*" and "buffer.*" keys in one file
        tensors = read_safetensors(folder / OLD_LORA_FILE, "LoRA weights")[0]
        for k, v in tensors.items():
            if k.startswith("buffer."):
                buffers[k[len("buffer."):]].copy_(v)
        model.unet.add_adapter(LoraConfig(init_lora_weights="gaussian", **lora))
        set_peft_model_state_dict(model.unet, {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")})
    else:
        saved = read_safetensors(folder / BUFFERS_FILE, "the calibrated constants")[0]
        if set(saved) != set(buffers) or any(saved[k].shape != buffers[k].shape for k in saved):
            raise ValueError(f"{folder / BUFFERS_FILE}: its constants do not match the model in config.json")
        for k, v in saved.items():
            buffers[k].copy_(v)
        model.unet.load_lora_adapter(str(folder), weight_name=LORA_WEIGHTS, prefix=lora_prefix(folder / LORA_WEIGHTS),
                                     adapter_name="default")
    model.unet.fuse_lora()
    model.unet.unload_lora()
    model.register_to_config(lora=None)
    return model.to(prior_unet.device, prior_unet.dtype)
