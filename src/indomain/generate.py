"""`indomain generate` and `indomain edit`: the commands that sample, on the options they share.

Checking the inputs, claiming ``--out``, opening the pipeline with the control components the flags ask for, the
call, and the settings record beside the images. `indomain ui` runs the same functions. No torch at import time,
so `indomain generate --help` starts at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .cliargs import (add_options, finite_float, from_args, option, positive_float, positive_int,
                      require_domain_for_weight)
from .schedulers import SCHEDULERS  # the names only: no diffusers

DESCRIPTION = """\
In-domain generation with a frozen diffusion prior plus a null-text domain model
(Cao et al., CVPR 2025). Per sampler step:

  eps = eps_prior(x, "") + w_d (eps_domain(x) - eps_prior(x, ""))
                         + w_c (eps_prior(x, prompt) - eps_prior(x, ""))
"""


def _weighted(text: str) -> tuple[str, float]:
    prompt, sep, weight = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        return prompt, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TEXT:WEIGHT (e.g. 'blurry:-1.5'), got {text!r}") from None


def _domain_spec(text: str) -> tuple[str, float | None]:
    """``DIR`` or ``DIR:WEIGHT`` (a weight that is not a finite number is an error; a path with no weight keeps its colons)."""
    path, sep, weight = text.rpartition(":")
    if not sep:
        return text, None
    try:
        value = float(weight)
    except ValueError:
        return text, None
    if not path or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected DIR or DIR:WEIGHT with a finite weight, got {text!r}")
    return path, value


@dataclass(kw_only=True)
class SamplingConfig:
    """The settings `generate` and `edit` share (each field is also its option ``--field-name``): models, guidance
    weights, sampler, seed, device, output. Written to settings.json beside the images."""

    prior: str = option(help="prior pipeline: a local diffusers folder, a hub id (e.g. a Stable Diffusion 1.5 folder), "
                        "or a single-file .safetensors checkpoint (with --prior-config)")
    prior_config: str | None = option(None, "for a single-file --prior: a diffusers folder (or hub id) of the same "
                                      "model, whose configs, tokenizers and scheduler are used (diffusers' "
                                      "from_single_file(config=...)); nothing downloads", metavar="DIR")
    domain: list[tuple[str, float | None]] | None = option(
        None, "domain model written by `indomain train` (a folder or a hub id); it may be omitted only with "
        "--domain-guidance-scale 0 (the prior alone). Repeat to mix domains, each with its own weight (default weight: "
        "--domain-guidance-scale)", type=_domain_spec, action="append", metavar="DIR[:WEIGHT]")
    negative_prompt: str | None = option(None, "replaces the empty prompt in the prior's unconditional branch (as in "
                                         "Stable Diffusion)")
    weighted_prompt: list[tuple[str, float]] | None = option(
        None, "extra guidance term shared by all images; repeatable; a negative weight pushes away (e.g. "
        "'blurry:-1.5')", type=_weighted, action="append", metavar="TEXT:WEIGHT")
    # w_d: `domain_guidance_scale` from the flag to the pipeline call (--domain-scale, its older name, still works)
    domain_guidance_scale: float | None = option(2.5, "domain guidance weight w_d (default: %(default)s, the official "
                                                 "value; 0 = prior only)", type=finite_float, metavar="W",
                                                 aliases=["--domain-scale"])
    guidance_scale: float = option(2.5, "control guidance weight w_c on --prompt (default: %(default)s, the official "
                                   "value)", type=finite_float, metavar="W")
    steps: int = option(25, "number of sampler steps", type=positive_int)
    scheduler: str = option("auto", f"sampler: {', '.join(SCHEDULERS)} (default: %(default)s: dpm++, DPM-Solver++ as in "
                            "the paper; flow-euler for SD3 priors)")
    seed: int = option(0, "seed of the first image; image i uses seed+i, so an image depends only on its seed")
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    dtype: str = option("float32", "model precision", choices=["float32", "float16", "bfloat16"])
    allow_pickle: bool = option(False, "allow loading pickle checkpoints (.bin/.ckpt), with weights_only loading; only "
                                "for files you trust")
    out: str = option(help="output folder (new, empty, or an earlier `{command}` output with --overwrite)")
    overwrite: bool = option(False, "replace an earlier `indomain {command}` output in --out")
    json: bool = option(False, "print the settings.json record (settings, images, environment) as JSON on stdout "
                        "instead of the summary line, for scripts")

    def record(self) -> dict[str, Any]:
        """The settings of settings.json: every field but --json (how it printed), plus ``domain_scale``, w_d under the
        key records had before the rename (scripts read it)."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k != "json"}
        return {**settings, "domain_scale": self.domain_guidance_scale}


SAMPLING_OPTIONS = [f.name for f in dataclasses.fields(SamplingConfig)]


def _add_sampling_options(p: argparse.ArgumentParser, cls: type, command: str) -> None:
    """The options `generate` and `edit` share, their help naming ``command``."""
    for action in add_options(p, cls, SAMPLING_OPTIONS).values():
        action.help = action.help.replace("{command}", command)


def _open_pipeline(cls: type, config: SamplingConfig, command: str) -> tuple[Any, Path, str]:
    """Check the inputs, claim --out, then load ``cls`` (a pipeline class) with the scheduler asked for. The fields only
    `generate` has (control, --distilled, ...) are read with getattr, so an `EditConfig` goes through the same checks."""
    import torch

    from .autopipeline import pipeline_class
    from .devices import resolve_device
    from .families import detect_family
    from .loading import resolve_domain_path
    from .outputs import claim_output_dir
    from .pipeline import InDomainPipeline
    from .safeload import check_prior, check_prior_config
    from .schedulers import make_scheduler

    device = resolve_device(config.device)
    specs = [(resolve_domain_path(d), w) for d, w in config.domain or []]  # folders, or hub ids in the cache
    domain = specs[0][0] if specs else None
    if specs and specs[0][1] is not None:  # --domain DIR:WEIGHT gives the first domain's weight
        config.domain_guidance_scale = specs[0][1]
    check_prior(config.prior, config.allow_pickle)
    check_prior_config(config.prior, config.prior_config)
    distilled = getattr(config, "distilled", None)
    if distilled is not None:
        if specs:
            raise ValueError("--distilled replaces --domain (the student has the domain built in): pass one of them")
        if len(distilled) > 2:
            raise ValueError(f"--distilled takes one student folder, or two (one distilled with --prompts and one "
                             f"without), got {len(distilled)}")
        for folder in distilled:
            if not Path(folder).is_dir():
                raise ValueError(f"--distilled {folder!r} is not a folder (a student written by `indomain distill`)")
    else:
        require_domain_for_weight(config.domain_guidance_scale, domain)
    dtype = getattr(torch, config.dtype)
    control = _check_control_args(config, dtype)
    if distilled is not None:
        control["distilled"] = distilled if len(distilled) > 1 else distilled[0]
    family = detect_family(config.prior, config.prior_config)
    if cls is InDomainPipeline:
        cls = pipeline_class(family)
    elif family.name != "sd":
        raise ValueError(f"indomain {command} supports Stable Diffusion 1.x / 2.x priors only; this prior is {family.title}")
    if control and family.name != "sd":
        raise ValueError(f"ControlNet / T2I-Adapter control supports Stable Diffusion 1.x / 2.x priors; this prior is {family.title}")
    if config.scheduler != "auto" and (family.objective == "flow") != (config.scheduler == "flow-euler"):
        raise ValueError(f"--scheduler {config.scheduler} does not fit a {family.title} prior (use auto)")
    if getattr(config, "share_base", False):
        from .loading import is_lora_folder

        if domain is None or not is_lora_folder(domain) or len(specs) > 1:
            raise ValueError("--share-base needs one --domain that is a LoRA domain model (`indomain train --lora-rank`)")
        control["share_base"] = True
    if config.prior_config:
        control["config"] = config.prior_config  # a single-file --prior's diffusers configs
    inputs = {"--prior": config.prior, "--prior-config": config.prior_config,
              "--domain": [p for p, _ in specs], "--image": getattr(config, "image", None),
              "--mask": getattr(config, "mask", None), "--distilled": distilled, **{f"--{k.replace('_', '-')}": getattr(config, k, None) for k in
              ("controlnet", "controlnet_config", "adapter", "control_image", "ip_adapter", "ip_image", "lora", "control_model",
               "control_model_config")}}
    out = claim_output_dir(config.out, command, overwrite=config.overwrite, inputs=inputs)
    pipe = cls.from_pretrained(config.prior, domain_unet=domain, allow_pickle=config.allow_pickle, dtype=dtype, **control)
    if config.scheduler != "auto" or getattr(getattr(pipe, "student", None), "objective", None) != "consistency":
        pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)  # (a consistency student keeps LCM's)
    if len(specs) > 1:
        from .loading import load_domain_model
        from .nulltext import NullTextUNet

        models = []
        for path, _ in specs[1:]:
            model = load_domain_model(path, pipe.denoiser, allow_pickle=config.allow_pickle, dtype=dtype)
            if not isinstance(model, NullTextUNet):
                raise ValueError(f"--domain {path}: a text-conditioned fine-tune can only be the first --domain; "
                                 "extra domains must be null-text domain models")
            models.append(model.to(dtype))
        pipe.set_extra_domains(models, [config.domain_guidance_scale if w is None else w for _, w in specs[1:]])
    if getattr(config, "lora", None):
        from .safeload import check_safe

        check_safe(config.lora, config.allow_pickle)  # a pickle LoRA only with --allow-pickle, read by our reader first
        try:
            pipe.load_lora_weights(config.lora, use_safetensors=None if config.allow_pickle else True)
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            raise ValueError(f"--lora {config.lora} does not fit this prior (or is not a LoRA folder): {err}") from None
    if getattr(config, "ip_adapter", None):
        ip = Path(config.ip_adapter)
        try:
            pipe.load_ip_adapter(str(ip.parent), subfolder="", weight_name=ip.name, image_encoder_folder="image_encoder")
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            raise ValueError(f"--ip-adapter {ip} does not fit this prior (or is not an IP-Adapter): {err}") from None
        pipe.set_ip_adapter_scale(config.ip_scale)
    return pipe.to(device), out, device


def _check_control_args(config: SamplingConfig, dtype: Any) -> dict:
    """The control components the flags ask for (loaded), after checking that the flags fit together."""
    nets, adapter, images = getattr(config, "controlnet", None) or [], getattr(config, "adapter", None), getattr(config, "control_image", None) or []
    scales, model = getattr(config, "control_scale", None) or [], getattr(config, "control_model", None)
    if nets and adapter:
        raise ValueError("--controlnet and --adapter cannot be combined in one run; use one kind of spatial control")
    if (nets or adapter) and not images:
        raise ValueError("--controlnet/--adapter need a --control-image")
    if images and not (nets or adapter):
        raise ValueError("--control-image needs a --controlnet or --adapter to read it")
    if nets and len(images) != len(nets):
        raise ValueError(f"{len(nets)} --controlnet but {len(images)} --control-image: give one control image per ControlNet")
    if adapter and len(images) != 1:
        raise ValueError(f"--adapter takes one --control-image, got {len(images)}")
    if scales and len(scales) not in (1, len(nets) or 1):
        raise ValueError(f"{len(scales)} --control-scale for {len(nets)} --controlnet: give one, or one per ControlNet")
    ip, ip_image = getattr(config, "ip_adapter", None), getattr(config, "ip_image", None)
    if bool(ip) != bool(ip_image):
        raise ValueError("--ip-adapter and --ip-image go together: give both or neither")
    if ip:
        from .safeload import check_safe

        if not Path(ip).is_file():
            raise ValueError(f"--ip-adapter {ip}: no such file (expected an IP-Adapter weights file)")
        if not Path(ip).parent.joinpath("image_encoder", "config.json").is_file():
            raise ValueError(f"--ip-adapter {ip}: no image_encoder/ folder beside it (the CLIP image encoder it needs)")
        check_safe(ip, config.allow_pickle)
        check_safe(Path(ip).parent / "image_encoder", config.allow_pickle)
        images = images + [ip_image]
    if getattr(config, "lora_uncond", "lora") == "prior" and not getattr(config, "lora", None):
        raise ValueError("--lora-uncond prior needs a --lora")
    for image in images:
        if not Path(image).is_file():
            raise ValueError(f"{'--ip-image' if image == ip_image else '--control-image'} {image}: no such file")
    net_configs = _controlnet_configs(nets, getattr(config, "controlnet_config", None) or [])
    model_config = getattr(config, "control_model_config", None)
    if model_config and not (model and Path(model).is_file()):
        raise ValueError("--control-model-config is for a single-file --control-model (a .safetensors file)")
    out: dict = {}
    if nets or adapter or model:
        from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel

        from .loading import load_model

        opts = {"allow_pickle": config.allow_pickle, "dtype": dtype}
        if nets:
            loaded = [load_model(ControlNetModel, n, "--controlnet", config=c, **opts) for n, c in zip(nets, net_configs)]
            out["controlnet"] = loaded[0] if len(loaded) == 1 else loaded
        if adapter:
            out["adapter"] = load_model(T2IAdapter, adapter, "--adapter", **opts)
        if model:
            out["control_unet"] = load_model(UNet2DConditionModel, model, "--control-model", config=model_config, **opts)
    return out


def _controlnet_configs(nets: list[str], configs: list[str]) -> list[str | None]:
    """The ``--controlnet-config`` of each ``--controlnet`` (None for a folder): one for every single-file ControlNet,
    or one per --controlnet."""
    files = [Path(n).is_file() for n in nets]
    if not configs:
        return [None] * len(nets)
    if not any(files):
        raise ValueError("--controlnet-config is for a single-file --controlnet (a .safetensors file)")
    if len(configs) == 1:
        return [configs[0] if f else None for f in files]
    if len(configs) != len(nets):
        raise ValueError(f"{len(configs)} --controlnet-config for {len(nets)} --controlnet: give one, or one per ControlNet")
    for net, config, f in zip(nets, configs, files):
        if not f:
            raise ValueError(f"--controlnet {net} is a folder: its --controlnet-config {config} would not be used "
                             "(give one --controlnet-config for the single files only)")
    return configs


def _control_call_kwargs(config: SamplingConfig, pipe: Any) -> dict:
    """The pipeline call's control arguments from the flags."""
    from .data import load_rgb

    kw: dict = {"lora_in_uncond": getattr(config, "lora_uncond", "lora") == "lora"} if getattr(config, "lora", None) else {}
    if getattr(config, "ip_image", None):
        kw["ip_adapter_image"] = load_rgb(config.ip_image)
    images = getattr(config, "control_image", None) or []
    if not images:
        return kw
    pictures = [load_rgb(i) for i in images]
    adapter = getattr(pipe, "adapter", None)
    if adapter is not None and getattr(adapter.config, "in_channels", 3) == 1:
        pictures = [p.convert("L") for p in pictures]
    scales = config.control_scale or [1.0]
    kw.update(image=pictures[0] if len(pictures) == 1 else pictures, controlnet_to_domain=config.control_to_domain)
    if adapter is not None:
        kw["adapter_conditioning_scale"] = scales[0]
    else:
        kw["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    return kw


def _finish(config: SamplingConfig, pipe: Any, out: Path, device: str, files: list[dict], start: float, what: str,
            **resolved: Any) -> None:
    """settings.json beside the images (``resolved``: more of what was decided at run time), then the result line (or
    the record, with --json)."""
    from .outputs import write_record

    record = write_record(
        out / "settings.json",
        config.record(),
        resolved={"device": device, "scheduler": dict(pipe.scheduler.config), "domain_config": dict(pipe.domain_model.config) if pipe.domain_model else None,
                  **({"student": vars(pipe.student)} if getattr(pipe, "student", None) is not None else {}),
                  **({"unconditional_student": vars(pipe.unconditional_student_settings)}
                     if getattr(pipe, "unconditional_student_settings", None) is not None else {}), **resolved},
        images=files,
        seconds=round(time.time() - start, 2),
    )
    if config.json:
        print(record.read_text(), end="")
    else:
        print(f"wrote {len(files)} {what}, grid.png and settings.json to {out}")


@dataclass(kw_only=True)
class GenerateConfig(SamplingConfig):
    """Every setting of `indomain generate`: the shared ones, the prompts and sizes, and spatial control."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = "sample in-domain images from a prior plus a domain model"

    prompt: list[str] | None = option(None, "control prompt; repeat for a batch of prompts (default: none: "
                                      "unconditional in-domain samples)", action="append")
    num_images: int = option(4, "images per prompt", type=positive_int)
    height: int | None = option(None, "image height in pixels (default: the prior's native size)", type=positive_int)
    width: int | None = option(None, "image width in pixels (default: the prior's native size)", type=positive_int)
    domain_every: int = option(1, "opt-in speed-up: run the domain model every K steps and reuse its term between "
                               "(default: 1, exact). Fewer domain-model calls for a small change in the images",
                               type=positive_int, metavar="K")
    guidance_form: str = option("auto", "how the prompt's term is measured. domain-text: by the domain model with the "
                                "prior's cross-attention put back, so the prompted subject comes in the domain's style; "
                                "decoupled: by the prior, the paper's Eq. A. domain-text-bands (opt-in): domain-text with "
                                "the prompt's low band (layout, broad colours) at --layout-guidance-scale and the rest at "
                                "--guidance-scale. auto (default): the form and weights `indomain tune` stored with the domain "
                                "model (tuned_guidance.json), if any; else domain-text for a null-text domain model on a "
                                "Stable Diffusion 1.x/2.x prior (without --domain-every), else decoupled. Default weights: "
                                "domain-text --domain-guidance-scale 4 --guidance-scale 2.5, domain-text-bands 4 / 6 "
                                "(low band 1), decoupled 2.5 / 2.5",
                                choices=["auto", "domain-text", "domain-text-bands", "decoupled"])
    # None: guidance.DEFAULT_LAYOUT_GUIDANCE_SCALE / LAYOUT_SIGMA, resolved in `generate` (this module loads no torch)
    layout_guidance_scale: float | None = option(None, "domain-text-bands: the weight of the prompt term's low band, its "
                                                 "layout and broad colours (default: 1; equal to --guidance-scale: "
                                                 "plain domain-text)", type=finite_float, metavar="W")
    layout_sigma: float | None = option(None, "domain-text-bands: the low band's edge, a Gaussian's standard deviation "
                                        "as a fraction of the latent's side (default: 3/16)", type=positive_float,
                                        metavar="S")
    distilled: list[str] | None = option(None, "a student written by `indomain distill`: one UNet call per step instead "
                                         "of Eq. A's three rows; replaces --domain, and refuses weights outside the "
                                         "ranges it was trained on. Two folders: one distilled with --prompts answers "
                                         "images with a prompt, one distilled without answers those without (an "
                                         "empty prompt is none)",
                                         metavar="DIR")
    share_base: bool = option(False, "serve a LoRA domain model (from `indomain train --lora-rank`) from the prior's own "
                              "UNet: every branch in one call per step and no second UNet in memory; same images up to "
                              "float round-off")
    # None: the --guidance-form's default weight, resolved once the pipeline is open (`generate`)
    domain_guidance_scale: float | None = option(None, "domain guidance weight w_d (default: the --guidance-form's: 4 "
                                                 "for domain-text, 2.5 (the official value) for decoupled; 0 = prior "
                                                 "only)", type=finite_float, metavar="W", aliases=["--domain-scale"])
    guidance_scale: float | None = option(None, "control guidance weight w_c on --prompt (default: the --guidance-form's: "
                                          "2.5, the official value; 6 for domain-text-bands)", type=finite_float,
                                          metavar="W")

    # spatial control and image prompts
    controlnet: list[str] | None = option(None, "a diffusers ControlNet folder for the prior, or a single .safetensors "
                                          "ControlNet (with --controlnet-config); repeat for multi-ControlNet (one "
                                          "--control-image each)", action="append", metavar="DIR|FILE")
    controlnet_config: list[str] | None = option(None, "for a single-file --controlnet: a diffusers ControlNet folder of "
                                                 "the same architecture (its config.json; weights not read); one for "
                                                 "every single-file --controlnet, or one per --controlnet",
                                                 action="append", metavar="DIR")
    adapter: str | None = option(None, "a diffusers T2I-Adapter folder for the prior (uses --control-image)",
                                 metavar="DIR")
    control_image: list[str] | None = option(None, "the control image: one per --controlnet, or one for --adapter; it "
                                             "sets the default size", action="append", metavar="IMG")
    control_scale: list[float] | None = option(None, "conditioning scale: one for all, or one per --controlnet "
                                               "(default: 1)", type=finite_float, action="append", metavar="S")
    control_to_domain: bool = option(True, "send the ControlNet/adapter residuals to the prior's branches only (default: "
                                     "every branch, the domain's too: with prior branches only their net weight is "
                                     "1 - w_d, which pushes away from the control)", flag="--control-prior-only")
    ip_adapter: str | None = option(None, "an IP-Adapter weights file for the prior (diffusers' load_ip_adapter); its "
                                    "CLIP image encoder is read from an image_encoder/ folder beside the file (the "
                                    "h94/IP-Adapter layout)", metavar="FILE")
    ip_image: str | None = option(None, "the image prompt of --ip-adapter", metavar="IMG")
    ip_scale: float = option(1.0, "the IP-Adapter's scale", type=finite_float)
    lora: str | None = option(None, "a LoRA for the prior, loaded with diffusers' load_lora_weights", metavar="DIR")
    lora_uncond: str = option("lora", "with --lora, where the unconditional branch comes from: the LoRA'd prior "
                              "(default, as diffusers) or the pristine prior (the LoRA disabled for that branch)",
                              choices=["lora", "prior"])
    control_model: str | None = option(None, "a customised checkpoint of the prior's architecture (a UNet folder, a "
                                       "pipeline with unet/, or a single .safetensors UNet with --control-model-config) "
                                       "that predicts the control prompt's term; the unconditional branch stays the "
                                       "prior's", metavar="DIR|FILE")
    control_model_config: str | None = option(None, "for a single-file --control-model: a diffusers UNet folder (or a "
                                              "pipeline folder with unet/) of the same architecture, e.g. the prior's "
                                              "folder; its weights are not read", metavar="DIR")


GENERATE_OPTIONS = ["prompt", "num_images", "height", "width", "domain_every", "guidance_form", "layout_guidance_scale",
                    "layout_sigma", "distilled", "share_base"]
CONTROL_OPTIONS = ["controlnet", "controlnet_config", "adapter", "control_image", "control_scale", "control_to_domain",
                   "ip_adapter", "ip_image", "ip_scale", "lora", "lora_uncond", "control_model", "control_model_config"]


def add_generate_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "generate",
        help=help,
        description=DESCRIPTION + "\nWrites one PNG per image, grid.png and settings.json into --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, GenerateConfig, GENERATE_OPTIONS)
    _add_sampling_options(p, GenerateConfig, "generate")
    add_options(p.add_argument_group("spatial control and image prompts"), GenerateConfig, CONTROL_OPTIONS)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    return generate(from_args(GenerateConfig, args))


def generate(config: GenerateConfig) -> int:
    """`indomain generate`: open the pipeline, sample every prompt's images, write them, grid.png and settings.json."""
    import torch

    from .outputs import make_grid
    from .pipeline import InDomainPipeline

    scale_given = config.domain_guidance_scale is not None or any(w is not None for _, w in (config.domain or [])[:1])
    if config.domain_guidance_scale is None:
        config.domain_guidance_scale = 2.5  # until the form is known (extra --domain models keep this default)
    tuned = _tuned_guidance(config)  # read before --out is claimed: a broken file fails first
    pipe, out, device = _open_pipeline(InDomainPipeline, config, "generate")
    tuned = _applicable(tuned, config, pipe)
    if tuned is not None:  # what `indomain tune` chose for this domain model fills what the flags left open
        config.guidance_form = tuned["guidance_form"]
        if not scale_given:
            config.domain_guidance_scale, scale_given = tuned["domain_guidance_scale"], True
        config.guidance_scale = _default(config.guidance_scale, tuned["guidance_scale"])
        config.layout_guidance_scale = _default(config.layout_guidance_scale, tuned.get("layout_guidance_scale"))
        config.layout_sigma = _default(config.layout_sigma, tuned.get("layout_sigma"))
    config.guidance_form = _guidance_form(config.guidance_form, pipe, config.domain_every)
    from .guidance import DEFAULT_WEIGHTS

    if not scale_given and config.domain:
        config.domain_guidance_scale = DEFAULT_WEIGHTS[config.guidance_form][0]
    if config.guidance_scale is None:
        config.guidance_scale = DEFAULT_WEIGHTS[config.guidance_form][1]
    bands = config.guidance_form == "domain-text-bands"
    if bands:
        from .guidance import DEFAULT_LAYOUT_GUIDANCE_SCALE, LAYOUT_SIGMA

        config.layout_guidance_scale = _default(config.layout_guidance_scale, DEFAULT_LAYOUT_GUIDANCE_SCALE)
        config.layout_sigma = _default(config.layout_sigma, LAYOUT_SIGMA)
    prompts = config.prompt or [None]
    control = _control_call_kwargs(config, pipe)
    images, files = [], []
    start = time.time()
    # several prompts: one bar over all their steps, not one per prompt
    from .console import progress

    bar = progress(total=len(prompts) * config.steps, desc="sampling", unit="step") if len(prompts) > 1 else None
    if bar is not None:
        pipe.set_progress_bar_config(disable=True)
        control["callback_on_step_end"] = lambda pipe_, i, t, kwargs: (bar.update(1), kwargs)[1]
    for p_idx, prompt in enumerate(prompts):
        seeds = [config.seed + p_idx * config.num_images + i for i in range(config.num_images)]
        result = pipe(
            prompt=prompt,
            negative_prompt=config.negative_prompt,
            weighted_prompts=config.weighted_prompt,
            num_images_per_prompt=config.num_images,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            domain_guidance_scale=config.domain_guidance_scale,
            domain_guidance_every=config.domain_every,
            **({"guidance_form": config.guidance_form} if config.guidance_form != "decoupled" else {}),
            **({"layout_guidance_scale": config.layout_guidance_scale, "layout_sigma": config.layout_sigma} if bands else {}),
            height=config.height,
            width=config.width,
            generator=[torch.Generator(device).manual_seed(s) for s in seeds],
            **control,
        ).images
        for seed, img in zip(seeds, result):
            name = f"p{p_idx:02d}_seed{seed:06d}.png"
            img.save(out / name)
            images.append(img)
            files.append({"file": name, "prompt": prompt, "seed": seed})
    if bar is not None:
        bar.close()
    make_grid(images, ncols=config.num_images).save(out / "grid.png")
    _finish(config, pipe, out, device, files, start, "images",
            **({"tuned_guidance": tuned} if tuned is not None else {}))
    return 0


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _tuned_guidance(config: GenerateConfig) -> dict[str, Any] | None:
    """The guidance `indomain tune` stored with the (one) domain model, unless another --guidance-form was asked for;
    its ``path`` added for settings.json. A broken file is an error that names it, not a silent default."""
    from .loading import TUNED_GUIDANCE_FILE, read_tuned_guidance, resolve_domain_path

    if config.distilled is not None or len(config.domain or []) != 1:
        return None
    folder = resolve_domain_path(config.domain[0][0])
    tuned = read_tuned_guidance(folder)
    if tuned is None or config.guidance_form not in ("auto", tuned["guidance_form"]):
        return None
    return {**tuned, "path": str(folder / TUNED_GUIDANCE_FILE)}


def _applicable(tuned: dict[str, Any] | None, config: GenerateConfig, pipe: Any) -> dict[str, Any] | None:
    """``tuned`` if this pipeline can sample with its form, else None (and a line saying why)."""
    from .console import info

    if tuned is None:
        return None
    form = tuned["guidance_form"]
    try:
        if form != "decoupled":
            pipe.check_guidance_form(form)
            if config.domain_every > 1:
                raise ValueError("--domain-every > 1 approximates Eq. A only")
    except ValueError as e:
        info(f"not using the guidance stored with the domain model ({form}): {e}; sampling with the defaults")
        return None
    info(f"guidance stored with the domain model by `indomain tune`: {form}, w_d = {tuned['domain_guidance_scale']:g}, "
         f"w_c = {tuned['guidance_scale']:g} (flags override it; `--guidance-form` picks the defaults of another form)")
    return tuned


def _guidance_form(form: str, pipe: Any, domain_every: int = 1) -> str:
    """``auto`` resolved for this pipeline: ``domain-text`` where it applies (a null-text domain model on an SD 1.x/2.x
    prior, no --control-model, --share-base, IP-Adapter or --domain-every > 1, which is an approximation of Eq. A), else
    ``decoupled``; an explicit form is checked by the pipeline."""
    if form != "auto":
        if form != "decoupled":
            pipe.check_guidance_form(form)
        return form
    if pipe.domain_model is None or domain_every > 1:
        return "decoupled"
    try:
        return pipe.check_guidance_form("domain-text")
    except ValueError:
        return "decoupled"


EDIT_METHODS = ("sdedit", "invert")  # = indomain.editing.METHODS, written here so `edit --help` loads no torch


@dataclass(kw_only=True)
class EditConfig(SamplingConfig):
    """Every setting of `indomain edit`: the shared ones, the images, the edit's prompt, strength, method and mask."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = "edit images into the domain: SDEdit or inversion, optionally inpainting a mask"

    image: str = option(help="an image file, or a folder of images (read with the training rules)")
    prompt: str | None = option(None, "the edit's control prompt (default: none: only the domain term edits)")
    strength: float = option(0.6, "how far into the noise the edit starts, in (0, 1]: 0.3 keeps the layout, 0.9 little "
                             "of it", type=finite_float)
    method: str = option("sdedit", "sdedit: noise then denoise; invert: DDIM inversion with the prior, then DDIM "
                         "regeneration, which keeps unedited content better", choices=EDIT_METHODS)
    mask: str | None = option(None, "inpainting mask image: white = regenerate, black = keep (default: none)")


def add_edit_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "edit",
        help=help,
        description="Edit images into the domain with decoupled guidance (SDEdit, or DDIM inversion then regeneration; "
        "optional inpainting mask). Writes one edited PNG per image, grid.png (before above after) and settings.json.",
    )
    add_options(p, EditConfig, ["image", "prompt", "strength", "method", "mask"])
    _add_sampling_options(p, EditConfig, "edit")
    p.set_defaults(func=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> int:
    return edit(from_args(EditConfig, args))


def edit(config: EditConfig) -> int:
    """`indomain edit`: every image edited into the domain, written with grid.png and settings.json."""
    import torch

    from .data import find_images, load_rgb
    from .editing import InDomainImg2ImgPipeline
    from .outputs import make_grid

    if not 0.0 < config.strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1], got {config.strength}")
    source = Path(config.image)
    if source.is_dir():
        paths = find_images(source)[0]
        if not paths:
            raise ValueError(f"--image {config.image!r}: no readable image in that folder")
    elif source.is_file():
        paths = [source]
    else:
        raise FileNotFoundError(f"--image {config.image!r} does not exist")
    mask = None if config.mask is None else load_rgb(config.mask)
    pipe, out, device = _open_pipeline(InDomainImg2ImgPipeline, config, "edit")
    before, after, files = [], [], []
    start = time.time()
    for i, path in enumerate(paths):
        image = load_rgb(path)
        edited = pipe(
            prompt=config.prompt, image=image, strength=config.strength, method=config.method, mask_image=mask,
            negative_prompt=config.negative_prompt, weighted_prompts=config.weighted_prompt,
            num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
            domain_guidance_scale=config.domain_guidance_scale,
            generator=torch.Generator(device).manual_seed(config.seed + i),
        ).images[0]
        name = f"{i:04d}_{path.stem}.png"
        edited.save(out / name)
        before.append(image.resize(edited.size))
        after.append(edited)
        files.append({"file": name, "source": str(path), "seed": config.seed + i})
    make_grid(before + after, ncols=len(after)).save(out / "grid.png")
    _finish(config, pipe, out, device, files, start, "edited images")
    return 0
