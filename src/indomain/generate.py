"""`indomain generate` and `indomain edit`: the commands that sample, on the options they share.

Checking the inputs, claiming ``--out``, opening the pipeline with the control components the flags ask for, the
call, and the settings record beside the images. `indomain ui` runs the same functions. No torch at import time,
so `indomain generate --help` starts at once.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from .cliargs import finite_float, positive_int, require_domain_for_weight

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


def _add_sampling_options(p: argparse.ArgumentParser, command: str, domain_scale: float | None = 2.5,
                          domain_scale_help: str = "the official value") -> None:
    """The options `generate` and `edit` share: models, guidance weights, sampler, seed, device, output."""
    from .schedulers import SCHEDULERS

    p.add_argument("--prior", required=True, help="prior pipeline: a local diffusers folder, a hub id (e.g. a Stable "
                   "Diffusion 1.5 folder), or a single-file .safetensors checkpoint (with --prior-config)")
    p.add_argument("--prior-config", default=None, metavar="DIR",
                   help="for a single-file --prior: a diffusers folder (or hub id) of the same model, whose configs, "
                        "tokenizers and scheduler are used (diffusers' from_single_file(config=...)); nothing downloads")
    p.add_argument("--domain", action="append", type=_domain_spec, default=None, metavar="DIR[:WEIGHT]",
                   help="domain model written by `indomain train` (a folder or a hub id); it may be omitted only with "
                        "--domain-scale 0 (the prior alone). "
                        "Repeat to mix domains, each with its own weight (default weight: --domain-scale)")
    p.add_argument("--negative-prompt", default=None, help="replaces the empty prompt in the prior's unconditional branch (as in Stable Diffusion)")
    p.add_argument("--weighted-prompt", action="append", type=_weighted, default=None, metavar="TEXT:WEIGHT",
                   help="extra guidance term shared by all images; repeatable; a negative weight pushes away (e.g. 'blurry:-1.5')")
    p.add_argument("--domain-scale", type=finite_float, default=domain_scale,
                   help=f"domain guidance weight w_d (default: {domain_scale_help}; 0 = prior only)")
    p.add_argument("--guidance-scale", type=finite_float, default=2.5, help="control guidance weight w_c on --prompt (default: %(default)s, the official value)")
    p.add_argument("--steps", type=positive_int, default=25, help="number of sampler steps (default: %(default)s)")
    p.add_argument("--scheduler", default="auto", help=f"sampler: {', '.join(SCHEDULERS)} (default: %(default)s: dpm++, "
                   "DPM-Solver++ as in the paper; flow-euler for SD3 priors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i, so an image depends only on its seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="model precision (default: %(default)s)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (.bin/.ckpt), with weights_only loading; only for files you trust")
    p.add_argument("--out", required=True, help=f"output folder (new, empty, or an earlier `{command}` output with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=f"replace an earlier `indomain {command}` output in --out")
    p.add_argument("--json", action="store_true", help="print the settings.json record (settings, images, environment) "
                   "as JSON on stdout instead of the summary line, for scripts")


def _open_pipeline(cls: type, args: argparse.Namespace, command: str) -> tuple[Any, Path, str]:
    """Check the inputs, claim --out, then load ``cls`` (a pipeline class) with the scheduler asked for."""
    import torch

    from .autopipeline import pipeline_class
    from .devices import resolve_device
    from .families import detect_family
    from .loading import resolve_domain_path
    from .outputs import claim_output_dir
    from .pipeline import InDomainPipeline
    from .safeload import check_prior, check_prior_config
    from .schedulers import make_scheduler

    device = resolve_device(args.device)
    specs = [(resolve_domain_path(d), w) for d, w in args.domain or []]  # folders, or hub ids in the cache
    domain = specs[0][0] if specs else None
    if specs and specs[0][1] is not None:  # --domain DIR:WEIGHT gives the first domain's weight
        args.domain_scale = specs[0][1]
    check_prior(args.prior, args.allow_pickle)
    check_prior_config(args.prior, getattr(args, "prior_config", None))
    distilled = getattr(args, "distilled", None)
    if distilled is not None:
        if specs:
            raise ValueError("--distilled replaces --domain (the student has the domain built in): pass one of them")
        if not Path(distilled).is_dir():
            raise ValueError(f"--distilled {distilled!r} is not a folder (a student written by `indomain distill`)")
    else:
        require_domain_for_weight(args.domain_scale, domain)
    dtype = getattr(torch, args.dtype)
    control = _check_control_args(args, dtype)
    if distilled is not None:
        control["distilled"] = distilled
    family = detect_family(args.prior, getattr(args, "prior_config", None))
    if cls is InDomainPipeline:
        cls = pipeline_class(family)
    elif family.name != "sd":
        raise ValueError(f"indomain {command} supports Stable Diffusion 1.x / 2.x priors only; this prior is {family.title}")
    if control and family.name != "sd":
        raise ValueError(f"ControlNet / T2I-Adapter control supports Stable Diffusion 1.x / 2.x priors; this prior is {family.title}")
    if args.scheduler != "auto" and (family.objective == "flow") != (args.scheduler == "flow-euler"):
        raise ValueError(f"--scheduler {args.scheduler} does not fit a {family.title} prior (use auto)")
    if getattr(args, "share_base", False):
        from .loading import is_lora_folder

        if domain is None or not is_lora_folder(domain) or len(specs) > 1:
            raise ValueError("--share-base needs one --domain that is a LoRA domain model (`indomain train --lora-rank`)")
        control["share_base"] = True
    if getattr(args, "prior_config", None):
        control["config"] = args.prior_config  # a single-file --prior's diffusers configs
    inputs = {"--prior": args.prior, "--prior-config": getattr(args, "prior_config", None),
              "--domain": [p for p, _ in specs], "--image": getattr(args, "image", None),
              "--mask": getattr(args, "mask", None), "--distilled": distilled, **{f"--{k.replace('_', '-')}": getattr(args, k, None) for k in
              ("controlnet", "controlnet_config", "adapter", "control_image", "ip_adapter", "ip_image", "lora", "control_model",
               "control_model_config")}}
    out = claim_output_dir(args.out, command, overwrite=args.overwrite, inputs=inputs)
    pipe = cls.from_pretrained(args.prior, domain_unet=domain, allow_pickle=args.allow_pickle, dtype=dtype, **control)
    if args.scheduler != "auto" or getattr(getattr(pipe, "student", None), "objective", None) != "consistency":
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)  # (a consistency student keeps LCM's)
    if len(specs) > 1:
        from .loading import load_domain_model
        from .nulltext import NullTextUNet

        models = []
        for path, _ in specs[1:]:
            model = load_domain_model(path, pipe.denoiser, allow_pickle=args.allow_pickle, dtype=dtype)
            if not isinstance(model, NullTextUNet):
                raise ValueError(f"--domain {path}: a text-conditioned fine-tune can only be the first --domain; "
                                 "extra domains must be null-text domain models")
            models.append(model.to(dtype))
        pipe.set_extra_domains(models, [args.domain_scale if w is None else w for _, w in specs[1:]])
    if getattr(args, "lora", None):
        from .safeload import check_safe

        check_safe(args.lora, args.allow_pickle)  # a pickle LoRA only with --allow-pickle, read by our reader first
        try:
            pipe.load_lora_weights(args.lora, use_safetensors=None if args.allow_pickle else True)
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            raise ValueError(f"--lora {args.lora} does not fit this prior (or is not a LoRA folder): {err}") from None
    if getattr(args, "ip_adapter", None):
        ip = Path(args.ip_adapter)
        try:
            pipe.load_ip_adapter(str(ip.parent), subfolder="", weight_name=ip.name, image_encoder_folder="image_encoder")
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            raise ValueError(f"--ip-adapter {ip} does not fit this prior (or is not an IP-Adapter): {err}") from None
        pipe.set_ip_adapter_scale(args.ip_scale)
    return pipe.to(device), out, device


def _add_control_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spatial control and image prompts")
    g.add_argument("--controlnet", action="append", default=None, metavar="DIR|FILE",
                   help="a diffusers ControlNet folder for the prior, or a single .safetensors ControlNet (with "
                        "--controlnet-config); repeat for multi-ControlNet (one --control-image each)")
    g.add_argument("--controlnet-config", action="append", default=None, metavar="DIR",
                   help="for a single-file --controlnet: a diffusers ControlNet folder of the same architecture (its "
                        "config.json; weights not read); one for every single-file --controlnet, or one per --controlnet")
    g.add_argument("--adapter", default=None, metavar="DIR", help="a diffusers T2I-Adapter folder for the prior (uses --control-image)")
    g.add_argument("--control-image", action="append", default=None, metavar="IMG",
                   help="the control image: one per --controlnet, or one for --adapter; it sets the default size")
    g.add_argument("--control-scale", action="append", type=finite_float, default=None, metavar="S",
                   help="conditioning scale: one for all, or one per --controlnet (default: 1)")
    g.add_argument("--control-prior-only", dest="control_to_domain", action="store_false",
                   help="send the ControlNet/adapter residuals to the prior's branches only (default: every branch, the "
                        "domain's too: with prior branches only their net weight is 1 - w_d, which pushes away from the "
                        "control)")
    g.add_argument("--ip-adapter", default=None, metavar="FILE",
                   help="an IP-Adapter weights file for the prior (diffusers' load_ip_adapter); its CLIP image encoder is "
                        "read from an image_encoder/ folder beside the file (the h94/IP-Adapter layout)")
    g.add_argument("--ip-image", default=None, metavar="IMG", help="the image prompt of --ip-adapter")
    g.add_argument("--ip-scale", type=finite_float, default=1.0, help="the IP-Adapter's scale (default: %(default)s)")
    g.add_argument("--lora", default=None, metavar="DIR", help="a LoRA for the prior, loaded with diffusers' load_lora_weights")
    g.add_argument("--lora-uncond", default="lora", choices=["lora", "prior"],
                   help="with --lora, where the unconditional branch comes from: the LoRA'd prior (default, as diffusers) "
                        "or the pristine prior (the LoRA disabled for that branch)")
    g.add_argument("--control-model", default=None, metavar="DIR|FILE",
                   help="a customised checkpoint of the prior's architecture (a UNet folder, a pipeline with unet/, or a "
                        "single .safetensors UNet with --control-model-config) that predicts the control prompt's term; "
                        "the unconditional branch stays the prior's")
    g.add_argument("--control-model-config", default=None, metavar="DIR",
                   help="for a single-file --control-model: a diffusers UNet folder (or a pipeline folder with unet/) of "
                        "the same architecture, e.g. the prior's folder; its weights are not read")


def _check_control_args(args: argparse.Namespace, dtype: Any) -> dict:
    """The control components the flags ask for (loaded), after checking that the flags fit together."""
    nets, adapter, images = getattr(args, "controlnet", None) or [], getattr(args, "adapter", None), getattr(args, "control_image", None) or []
    scales, model = getattr(args, "control_scale", None) or [], getattr(args, "control_model", None)
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
    ip, ip_image = getattr(args, "ip_adapter", None), getattr(args, "ip_image", None)
    if bool(ip) != bool(ip_image):
        raise ValueError("--ip-adapter and --ip-image go together: give both or neither")
    if ip:
        from .safeload import check_safe

        if not Path(ip).is_file():
            raise ValueError(f"--ip-adapter {ip}: no such file (expected an IP-Adapter weights file)")
        if not Path(ip).parent.joinpath("image_encoder", "config.json").is_file():
            raise ValueError(f"--ip-adapter {ip}: no image_encoder/ folder beside it (the CLIP image encoder it needs)")
        check_safe(ip, args.allow_pickle)
        check_safe(Path(ip).parent / "image_encoder", args.allow_pickle)
        images = images + [ip_image]
    if getattr(args, "lora_uncond", "lora") == "prior" and not getattr(args, "lora", None):
        raise ValueError("--lora-uncond prior needs a --lora")
    for image in images:
        if not Path(image).is_file():
            raise ValueError(f"{'--ip-image' if image == ip_image else '--control-image'} {image}: no such file")
    net_configs = _controlnet_configs(nets, getattr(args, "controlnet_config", None) or [])
    model_config = getattr(args, "control_model_config", None)
    if model_config and not (model and Path(model).is_file()):
        raise ValueError("--control-model-config is for a single-file --control-model (a .safetensors file)")
    out: dict = {}
    if nets or adapter or model:
        from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel

        from .loading import load_model

        opts = {"allow_pickle": args.allow_pickle, "dtype": dtype}
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


def _control_call_kwargs(args: argparse.Namespace, pipe: Any) -> dict:
    """The pipeline call's control arguments from the flags."""
    from .data import load_rgb

    kw: dict = {"lora_in_uncond": getattr(args, "lora_uncond", "lora") == "lora"} if getattr(args, "lora", None) else {}
    if getattr(args, "ip_image", None):
        kw["ip_adapter_image"] = load_rgb(args.ip_image)
    images = getattr(args, "control_image", None) or []
    if not images:
        return kw
    pictures = [load_rgb(i) for i in images]
    adapter = getattr(pipe, "adapter", None)
    if adapter is not None and getattr(adapter.config, "in_channels", 3) == 1:
        pictures = [p.convert("L") for p in pictures]
    scales = args.control_scale or [1.0]
    kw.update(image=pictures[0] if len(pictures) == 1 else pictures, controlnet_to_domain=args.control_to_domain)
    if adapter is not None:
        kw["adapter_conditioning_scale"] = scales[0]
    else:
        kw["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    return kw


def _finish(args: argparse.Namespace, pipe: Any, out: Path, device: str, files: list[dict], start: float, what: str) -> None:
    """settings.json beside the images, then the result line (or the record, with --json)."""
    from .outputs import write_record

    settings = {k: v for k, v in vars(args).items() if k not in ("func", "verbosity", "json")}  # not how it printed
    record = write_record(
        out / "settings.json",
        settings,
        resolved={"device": device, "scheduler": dict(pipe.scheduler.config), "domain_config": dict(pipe.domain_model.config) if pipe.domain_model else None,
                  **({"student": vars(pipe.student)} if getattr(pipe, "student", None) is not None else {})},
        images=files,
        seconds=round(time.time() - start, 2),
    )
    if args.json:
        print(record.read_text(), end="")
    else:
        print(f"wrote {len(files)} {what}, grid.png and settings.json to {out}")


def add_generate_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "generate",
        help=help,
        description=DESCRIPTION + "\nWrites one PNG per image, grid.png and settings.json into --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt", action="append", default=None, help="control prompt; repeat for a batch of prompts. Omit for unconditional in-domain samples")
    p.add_argument("--num-images", type=positive_int, default=4, help="images per prompt (default: %(default)s)")
    p.add_argument("--height", type=positive_int, default=None, help="image height in pixels (default: the prior's native size)")
    p.add_argument("--width", type=positive_int, default=None, help="image width in pixels (default: the prior's native size)")
    p.add_argument("--domain-every", type=positive_int, default=1, metavar="K",
                   help="opt-in speed-up: run the domain model every K steps and reuse its term between (default: 1, "
                        "exact). Fewer domain-model calls for a small change in the images")
    p.add_argument("--guidance-form", default="auto", choices=["auto", "domain-text", "decoupled"],
                   help="how the prompt's term is measured. domain-text: by the domain model with the "
                        "prior's cross-attention put back, so the prompted subject comes in the domain's style; "
                        "decoupled: by the prior, the paper's Eq. A. auto (default): domain-text for a null-text domain "
                        "model on a Stable Diffusion 1.x/2.x prior (without --domain-every), else decoupled. Default weights: domain-text "
                        "--domain-scale 4 --guidance-scale 2.5, decoupled 2.5 / 2.5")
    p.add_argument("--distilled", default=None, metavar="DIR",
                   help="a student written by `indomain distill`: one UNet call per step instead of Eq. A's three rows; "
                        "replaces --domain, and refuses weights outside the ranges it was trained on")
    p.add_argument("--share-base", action="store_true",
                   help="serve a LoRA domain model (from `indomain train --lora-rank`) from the prior's own UNet: every "
                        "branch in one call per step and no second UNet in memory; same images up to float round-off")
    _add_sampling_options(p, "generate", None, "the --guidance-form's: 4 for domain-text, 2.5 (the official value) for "
                          "decoupled")
    _add_control_options(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .outputs import make_grid
    from .pipeline import InDomainPipeline

    scale_given = args.domain_scale is not None or any(w is not None for _, w in (args.domain or [])[:1])
    if args.domain_scale is None:
        args.domain_scale = 2.5  # until the form is known (extra --domain models keep this default)
    pipe, out, device = _open_pipeline(InDomainPipeline, args, "generate")
    args.guidance_form = _guidance_form(args.guidance_form, pipe, args.domain_every)
    if not scale_given and args.domain:
        from .guidance import DEFAULT_WEIGHTS

        args.domain_scale = DEFAULT_WEIGHTS[args.guidance_form][0]
    prompts = args.prompt or [None]
    control = _control_call_kwargs(args, pipe)
    images, files = [], []
    start = time.time()
    for p_idx, prompt in enumerate(prompts):
        seeds = [args.seed + p_idx * args.num_images + i for i in range(args.num_images)]
        result = pipe(
            prompt=prompt,
            negative_prompt=args.negative_prompt,
            weighted_prompts=args.weighted_prompt,
            num_images_per_prompt=args.num_images,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            domain_guidance_scale=args.domain_scale,
            domain_guidance_every=args.domain_every,
            **({"guidance_form": args.guidance_form} if args.guidance_form != "decoupled" else {}),
            height=args.height,
            width=args.width,
            generator=[torch.Generator(device).manual_seed(s) for s in seeds],
            **control,
        ).images
        for seed, img in zip(seeds, result):
            name = f"p{p_idx:02d}_seed{seed:06d}.png"
            img.save(out / name)
            images.append(img)
            files.append({"file": name, "prompt": prompt, "seed": seed})
    make_grid(images, ncols=args.num_images).save(out / "grid.png")
    _finish(args, pipe, out, device, files, start, "images")
    return 0


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


def add_edit_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "edit",
        help=help,
        description="Edit images into the domain with decoupled guidance (SDEdit, or DDIM inversion then regeneration; "
        "optional inpainting mask). Writes one edited PNG per image, grid.png (before above after) and settings.json.",
    )
    p.add_argument("--image", required=True, help="an image file, or a folder of images (read with the training rules)")
    p.add_argument("--prompt", default=None, help="the edit's control prompt (default: none: only the domain term edits)")
    p.add_argument("--strength", type=finite_float, default=0.6, help="how far into the noise the edit starts, in (0, 1]: "
                   "0.3 keeps the layout, 0.9 little of it (default: %(default)s)")
    p.add_argument("--method", default="sdedit", choices=EDIT_METHODS, help="sdedit: noise then denoise; invert: DDIM inversion "
                   "with the prior, then DDIM regeneration, which keeps unedited content better (default: %(default)s)")
    p.add_argument("--mask", default=None, help="inpainting mask image: white = regenerate, black = keep (default: none)")
    _add_sampling_options(p, "edit")
    p.set_defaults(func=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from .data import find_images, load_rgb
    from .editing import InDomainImg2ImgPipeline
    from .outputs import make_grid

    if not 0.0 < args.strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
    source = Path(args.image)
    if source.is_dir():
        paths = find_images(source)[0]
        if not paths:
            raise ValueError(f"--image {args.image!r}: no readable image in that folder")
    elif source.is_file():
        paths = [source]
    else:
        raise FileNotFoundError(f"--image {args.image!r} does not exist")
    mask = None if args.mask is None else load_rgb(args.mask)
    pipe, out, device = _open_pipeline(InDomainImg2ImgPipeline, args, "edit")
    before, after, files = [], [], []
    start = time.time()
    for i, path in enumerate(paths):
        image = load_rgb(path)
        edited = pipe(
            prompt=args.prompt, image=image, strength=args.strength, method=args.method, mask_image=mask,
            negative_prompt=args.negative_prompt, weighted_prompts=args.weighted_prompt, num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale, domain_guidance_scale=args.domain_scale,
            generator=torch.Generator(device).manual_seed(args.seed + i),
        ).images[0]
        name = f"{i:04d}_{path.stem}.png"
        edited.save(out / name)
        before.append(image.resize(edited.size))
        after.append(edited)
        files.append({"file": name, "source": str(path), "seed": args.seed + i})
    make_grid(before + after, ncols=len(after)).save(out / "grid.png")
    _finish(args, pipe, out, device, files, start, "edited images")
    return 0
