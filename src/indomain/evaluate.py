"""`indomain evaluate`: fidelity and controllability of generator settings, measured the way the field does.

    indomain evaluate --prior SD15 --domain DOMAIN --real FFHQ --inception-weights W.pth \\
        --num-images 10000 --domain-guidance-scales 1.5 1.75 2 2.25 2.5 --out runs/ffhq-eval
    indomain evaluate ... --prompts-file prompts.txt --clip-text-file controls.txt --clip-model CLIP-L14 \\
        --domain-guidance-scales 0 1 2.5 --guidance-scales 0 2.5 5              # fidelity-controllability curve
    accelerate launch --multi_gpu --num_processes 8 -m indomain.cli evaluate ...   # same images, sharded

A *method* is a named generator (prior, optional domain model, optional UNet override); a *setting* is a method
at one pair of weights (w_d domain, w_c control). For every setting, N images are generated: image i uses the
prompt ``prompts[i % len(prompts)]`` (no prompts: unconditional) and its own ``torch.Generator`` seeded with
``seed + i`` on the CPU, so an image depends only on its index, not on the device count or the setting's position
in the sweep (every setting sees the same noise). Batches of ``batch_size`` consecutive indices are dealt
round-robin to the processes, so a sharded run makes exactly the batches of a one-process run and, on the same
hardware, byte-identical PNGs. A different ``batch_size`` changes only float round-off (about 1e-6 on CPU, which
can flip a rare 8-bit pixel value by 1), because batched kernels sum in a different order.
Each process writes ``images/<setting>/<index:06d>.png``; the main process waits for all of them and scores the
saved 8-bit PNGs (what anyone can re-score later):

* FID and KID against ``--real`` (torchmetrics, features of ``--inception-weights`` or any ``nn.Module``; the
  size rule, caching and recorded protocol are those of :mod:`indomain.metrics`);
* CLIP score against ``--clip-text`` (the paper scores the control phrase, not the full prompt);
* any user scorer ``scorer(images, prompts) -> {column: value}`` (Python API).

Outputs in ``--out``: ``results.csv``, ``results.json`` (every MetricResult with library, version, extractor,
resize mode, resolution, N real, N generated), ``results.md``, ``plot.png`` (controllability on x, fidelity on y,
one series per method, points labelled w_d/w_c), ``grids/<setting>.png``, ``settings.json`` and a self-contained
``report.html`` (command line, every setting, table, plot, sample grids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

import PIL.Image

from .cliargs import add_options, finite_float, from_args, option, positive_int
from .outputs import atomic_path, claim_output_dir, close_run, make_grid, to_json

if TYPE_CHECKING:  # torch, numpy and the metrics load in the functions that use them, so `--help` starts at once
    import torch
    from torch import nn

    from .metrics import FeatureStats, MetricResult

__all__ = [
    "EvalCommand",
    "EvalConfig",
    "EvalResult",
    "ExtractorConfig",
    "Method",
    "MethodFlags",
    "Scorer",
    "Setting",
    "Sweep",
    "add_extractor_options",
    "add_parser",
    "evaluate",
    "extractor_from_args",
    "generate_batch",
    "load_extractor",
    "load_method",
    "read_lines",
    "result_record",
    "score_setting",
    "shard_batches",
]

Scorer = Callable[[list[PIL.Image.Image], list[str | None]], dict[str, float]]
"""``scorer(images, prompts) -> {column: value}``: one call per setting with all its images (PIL, index order, all
in memory at once) and their generation prompts (None when unconditional). Each key becomes a results column."""


# ----------------------------------------------------------------------------------------------------------------
# What to evaluate
# ----------------------------------------------------------------------------------------------------------------


#: ours' method name in result tables under each guidance form (`indomain tune`, `indomain world benchmark`)
OURS_METHODS = {"decoupled": "ours", "domain-text": "ours-dt", "domain-text-bands": "ours-bands"}


@dataclass
class Method:
    """A named generator: the prior plus what replaces or joins its UNet.

    * ours: ``domain=<NullTextUNet folder>`` (decoupled guidance: w_d on the domain model, w_c on the prior; with
      ``guidance_form="domain-text"``, w_c on the domain model with the prior's text pathway put back);
    * conventional fine-tune + CFG: ``unet=<fine-tuned UNet folder>``, no domain (its rows have w_d = 0);
    * rectified CFG / Domain Guidance: ``domain=<fine-tuned text UNet folder>``, ``domain_prompt=<its caption>``,
      ``guidance_scales=(0,)``.

    ``domain`` and ``unet`` are folders or model instances. ``domain_guidance_scales`` / ``guidance_scales`` replace
    the sweep's weights for this method only.
    """

    name: str
    prior: str | os.PathLike
    domain: str | os.PathLike | nn.Module | None = None
    unet: str | os.PathLike | nn.Module | None = None
    domain_prompt: str | None = None
    weighted_prompts: list[tuple[str, float]] | None = None
    prompt_template: str = "{}"  # how this method phrases a prompt, e.g. "openmoji style, {}" for a captioned fine-tune
    domain_guidance_scales: Sequence[float] | None = None
    guidance_scales: Sequence[float] | None = None
    allow_pickle: bool = False
    guidance_form: str = "decoupled"  # the pipeline's guidance_form: a key of OURS_METHODS
    prior_config: str | os.PathLike | None = None  # a single-file (.safetensors) prior's diffusers config folder

    def record(self) -> dict[str, Any]:
        """JSON-ready fields; model instances are named by class (their repr is the whole network)."""

        from torch import nn

        def describe(value: Any) -> Any:
            return f"<{type(value).__name__} instance>" if isinstance(value, nn.Module) else value

        return {f.name: describe(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass
class Sweep:
    """The grid of weights: every domain weight w_d times every control weight w_c."""

    domain_guidance_scales: Sequence[float] = option((2.5,), "domain weights w_d (default: %(default)s; methods "
                                                     "without a domain model use 0)", type=finite_float, metavar="W",
                                                     aliases=["--domain-scales"])
    guidance_scales: Sequence[float] = option((2.5,), "control weights w_c (default: %(default)s; unconditional runs "
                                              "use 0)", type=finite_float, metavar="W")

    def weights(self, method: Method, conditional: bool) -> list[tuple[float, float]]:
        """The (w_d, w_c) pairs of ``method``. A term that does not exist has weight 0: no domain model means
        w_d = 0, no prompts means w_c = 0 (the pairs are then deduplicated)."""
        domain = self.domain_guidance_scales if method.domain_guidance_scales is None else method.domain_guidance_scales
        control = method.guidance_scales if method.guidance_scales is not None else self.guidance_scales
        domain = domain if method.domain is not None else [0.0]
        control = control if conditional else [0.0]
        pairs = [(float(wd), float(wc)) for wd in domain for wc in control]
        return list(dict.fromkeys(pairs))


@dataclass
class EvalConfig:
    """The protocol shared by every method and setting (written to settings.json).

    Each field is also an option of ``indomain evaluate`` (``--field-name`` unless ``flag`` says otherwise).
    """

    out: str | os.PathLike = option(help="output folder (images/, grids/, results.*, plot.png, report.html, "
                                         "settings.json)")
    num_images: int = option(1000, "images per setting (default: %(default)s, the paper's in-training eval: 1,000 "
                             "generated vs 1,000 real; 10000 recommended for final numbers)", type=positive_int,
                             metavar="N")
    prompts: list[str] | None = option(None, "generation prompts; image i uses prompt i mod P (default: none = "
                                       "unconditional)", metavar="TEXT")
    clip_texts: list[str] | None = option(None, "scored texts aligned with --prompts, e.g. the control phrase only "
                                          "(default: the prompts)", flag="--clip-text", metavar="TEXT")
    seed: int = option(0, "image i uses seed+i, in every setting")
    scheduler: str = option("auto", "sampler (default: %(default)s: dpm++, DPM-Solver++ as in the paper; flow-euler for "
                                    "SD3 priors)")
    steps: int = option(25, "sampler steps", type=positive_int)
    batch_size: int = option(8, "images per pipeline call per process", type=positive_int)
    height: int | None = option(None, "image height (default: the prior's native size)", type=positive_int)
    width: int | None = option(None, "image width (default: the prior's native size)", type=positive_int)
    dtype: str = option("float32", "model precision", choices=["float32", "float16", "bfloat16"])
    real: str | os.PathLike | None = option(None, "real-image folder for FID/KID (recursive; default: no FID/KID)",
                                            metavar="DIR")
    metrics: tuple[str, ...] = option(("fid", "kid"), "image metrics against --real", choices=["fid", "kid"])
    resolution: int | None = option(None, "images are center-cropped and bicubic-resized to this before the extractor "
                                    "(default: the extractor's, 299 for Inception, 64 for random-conv)", type=int)
    kid_subset_size: int = option(1000, "KID subset size, at most N and N real", type=positive_int)
    kid_subsets: int = option(100, "KID subsets", type=positive_int)
    stats_cache: str | os.PathLike | None = option(None, "real-statistics cache (default: $INDOMAIN_STATS_CACHE or "
                                                   "~/.cache/indomain/stats)", metavar="DIR")
    use_stats_cache: bool = option(True, "cache the real statistics; --no-stats-cache recomputes them",
                                   flag="--no-stats-cache")
    clip_model: str | os.PathLike | None = option(None, "local CLIP folder (e.g. openai/clip-vit-large-patch14) for "
                                                  "CLIP score (default: no CLIP score)", metavar="DIR")
    plot_x: str | None = option(None, "x column of plot.png (default: clip_score, else the first scorer column, "
                                "else w_d)")
    plot_y: str | None = option(None, "y column of plot.png (default: fid, else kid, else the first scorer column)")
    grid_images: int = option(8, "images per sample grid in the report", type=positive_int)
    overwrite: bool = option(False, "replace an earlier `indomain evaluate` output in --out")

    def prompt_for(self, index: int) -> str | None:
        return self.prompts[index % len(self.prompts)] if self.prompts else None

    def clip_text_for(self, index: int) -> str:
        texts = self.clip_texts or self.prompts
        assert texts, "checked in _check_config"
        return texts[index % len(texts)]


@dataclass(frozen=True)
class Setting:
    """One method at one pair of weights; ``name`` is its folder under images/ and grids/."""

    method: Method
    w_d: float
    w_c: float

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", f"{self.method.name}_wd{self.w_d:g}_wc{self.w_c:g}")


@dataclass
class EvalResult:
    """What the main process returns: one row per setting and the full metric records."""

    out: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, dict[str, MetricResult]] = field(default_factory=dict)


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file (trailing whitespace stripped): prompts or CLIP texts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    lines = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"text file {str(path)!r} holds no non-empty line")
    return lines


def shard_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Image indices of ``rank``: batches of consecutive indices, dealt round-robin to the ``world`` processes.

    Whole batches are dealt (not single images) so every image is made in the same batch as in a one-process run.
    """
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    return batches[rank::world]


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def load_method(method: Method, config: EvalConfig, device: torch.device) -> Any:
    """The method's `InDomainPipeline` on ``device`` with the configured scheduler."""
    import torch
    from torch import nn

    from .nulltext import check_compatible
    from .loading import load_domain_model
    from .autopipeline import InDomainAutoPipeline
    from .schedulers import make_scheduler

    dtype = getattr(torch, config.dtype)
    single = {"config": method.prior_config} if method.prior_config is not None else {}
    pipe = InDomainAutoPipeline.from_pretrained(
        method.prior, domain_unet=method.domain, allow_pickle=method.allow_pickle, dtype=dtype, **single
    )
    if method.unet is not None:
        # Swapped in after loading, so a LoRA domain model is rebuilt on the prior's weights, not the fine-tune's.
        unet = method.unet
        if not isinstance(unet, nn.Module):
            unet = load_domain_model(unet, allow_pickle=method.allow_pickle, dtype=dtype)
        if type(unet) is not type(pipe.denoiser):
            raise ValueError(f"method {method.name!r}: unet must be a text-conditioned {type(pipe.denoiser).__name__} "
                             f"(the prior's class), got a {type(unet).__name__} (a domain model goes in domain=)")
        if pipe.domain_model is not None:
            check_compatible(unet, pipe.domain_model, pipe.prediction_type)
        name = "transformer" if pipe.denoiser is getattr(pipe, "transformer", None) else "unet"
        pipe.register_modules(**{name: unet if unet.dtype == dtype else unet.to(dtype)})
    pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)  # one bar over all images instead (see evaluate)
    return pipe.to(device)


def generate_batch(pipe: Any, setting: Setting, indices: Sequence[int], config: EvalConfig) -> list[PIL.Image.Image]:
    """Images ``indices`` of ``setting``: each from its own prompt and its own generator seeded ``seed + i``."""
    import torch

    # CPU generators: the initial noise is then the same on any device and any number of devices.
    generators = [torch.Generator("cpu").manual_seed(config.seed + i) for i in indices]
    conditional = config.prompts is not None
    return pipe(
        prompt=[setting.method.prompt_template.format(config.prompt_for(i)) for i in indices] if conditional else None,
        num_images_per_prompt=1 if conditional else len(indices),
        domain_prompt=setting.method.domain_prompt,
        weighted_prompts=setting.method.weighted_prompts,
        domain_guidance_scale=setting.w_d,
        guidance_scale=setting.w_c,
        **({"guidance_form": setting.method.guidance_form} if setting.method.guidance_form != "decoupled" else {}),
        num_inference_steps=config.steps,
        height=config.height,
        width=config.width,
        generator=generators,
    ).images


def _save_png(image: PIL.Image.Image, path: Path) -> None:
    # Write then rename: a killed run never leaves a truncated PNG that a later scoring pass would read.
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def image_files(out: Path, setting: Setting, n: int) -> list[Path]:
    """The PNG files of a setting, in index order."""
    folder = out / "images" / setting.name
    return [folder / f"{i:06d}.png" for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


def _png_batches(files: Sequence[Path], batch_size: int = 50) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) batches read lazily, so 10k images never sit in memory at once."""
    import numpy as np
    import torch

    from .data import load_rgb

    for start in range(0, len(files), batch_size):
        arrays = [np.asarray(load_rgb(p)) for p in files[start : start + batch_size]]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def score_setting(
    files: Sequence[Path],
    setting: Setting,
    config: EvalConfig,
    *,
    extractor: nn.Module | None,
    real_stats: FeatureStats | None,
    scorer: Scorer | None,
    device: torch.device | None = None,
) -> tuple[dict[str, float], dict[str, MetricResult]]:
    """Score one setting's saved images: (row values, full metric records)."""
    from .data import load_rgb
    from .metrics import clip_score, image_metrics

    values: dict[str, float] = {}
    records: dict[str, MetricResult] = {}
    if real_stats is not None and extractor is not None:
        records.update(
            image_metrics(
                real_stats, _png_batches(files), extractor, metrics=config.metrics, resolution=config.resolution,
                kid_subset_size=config.kid_subset_size, kid_subsets=config.kid_subsets, seed=config.seed,
            )
        )
    if config.clip_model is not None:
        texts = [config.clip_text_for(i) for i in range(len(files))]
        records["clip_score"] = clip_score(_png_batches(files, 32), texts, config.clip_model, device=device)
    for name, result in records.items():
        values[name] = result.value
        if result.std is not None:
            values[f"{name}_std"] = result.std
    if scorer is not None:
        images = [load_rgb(p) for p in files]
        extra = scorer(images, [config.prompt_for(i) for i in range(len(files))])
        clash = sorted(set(extra) & (set(values) | {"method", "w_d", "w_c", "setting", "n_generated", "images"}))
        if clash:
            raise ValueError(f"scorer columns {clash} clash with built-in columns; rename them")
        values.update({str(k): float(v) for k, v in extra.items()})
    return values, records


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _check_config(methods: Sequence[Method], config: EvalConfig, extractor: nn.Module | None) -> int | None:
    """Everything that can fail before generation fails here, on every process alike; returns N real."""
    from .metrics import MissingWeightsError, check_kid_subset, list_images
    from .safeload import check_prior_config

    names = [m.name for m in methods]
    if not methods or len(set(names)) != len(names):
        raise ValueError(f"methods need distinct names, got {names}")
    for name in ("num_images", "batch_size", "steps", "grid_images"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.prompts is not None and not config.prompts:
        raise ValueError("prompts is an empty list: pass None for unconditional generation")
    if config.clip_texts is not None and config.prompts and len(config.clip_texts) != len(config.prompts):
        raise ValueError(f"clip texts are aligned with prompts: got {len(config.clip_texts)} clip texts for "
                         f"{len(config.prompts)} prompts")
    if config.clip_model is not None:
        if not (config.clip_texts or config.prompts):
            raise ValueError("CLIP score needs text: pass prompts or clip texts (--clip-text)")
        if not (Path(config.clip_model).expanduser() / "config.json").is_file():
            raise MissingWeightsError(f"CLIP model folder {str(config.clip_model)!r} has no config.json: pass a local "
                                      "CLIP folder (e.g. openai/clip-vit-large-patch14) with --clip-model DIR")
    unknown = set(config.metrics) - {"fid", "kid"}
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from fid, kid")
    for m in methods:  # --prior-config (prior_config) goes with a single-file prior only
        try:
            check_prior_config(m.prior, m.prior_config)
        except ValueError as err:
            raise ValueError(f"method {m.name!r}: {err}") from None
    if config.real is None:
        return None
    if extractor is None:
        raise MissingWeightsError("FID/KID need a feature extractor: pass extractor=inception_extractor(PATH) "
                                  "(CLI: --inception-weights PATH)")
    n_real = len(list_images(config.real))
    if "kid" in config.metrics:
        try:
            check_kid_subset(config.kid_subset_size, n_real, config.num_images)
        except ValueError as err:
            raise ValueError(f"{err} (--kid-subset-size), or drop KID with --metrics fid") from None
    return n_real


EVALUATE_OUTPUTS = ("results.csv", "results.json", "results.md", "plot.png", "settings.json", "report.html")  # files


def evaluate(
    methods: Method | Sequence[Method],
    sweep: Sweep,
    config: EvalConfig,
    *,
    extractor: nn.Module | None = None,
    scorer: Scorer | None = None,
    desc: str = "generating",
) -> EvalResult | None:
    """Generate every setting of ``methods`` x ``sweep``, score it and write tables, plot and report.

    Runs as one process or sharded under ``accelerate launch``/torchrun (each process generates its batches, see
    :func:`shard_batches`). Returns the results on the main process, None on the others; the main process scores
    alone once every image exists.
    ``extractor`` is the FID/KID feature network (any ``nn.Module`` mapping [0, 1] images to features; needed with
    ``config.real``); ``scorer`` adds columns, see :data:`Scorer`; ``desc`` labels the progress bar.
    """
    import torch
    from accelerate import PartialState

    methods = [methods] if isinstance(methods, Method) else list(methods)
    n_real = _check_config(methods, config, extractor)
    # cpu=True without a GPU turns torchrun's environment into a gloo run on CPU processes.
    state = PartialState(cpu=not torch.cuda.is_available())
    out = Path(config.out)
    if state.is_main_process:
        inputs = {"--real": config.real, "--clip-model": config.clip_model,
                  "--prior": [m.prior for m in methods],
                  "--prior-config": [m.prior_config for m in methods if m.prior_config is not None],
                  "--domain": [m.domain for m in methods if isinstance(m.domain, (str, os.PathLike))],
                  "--unet": [m.unet for m in methods if isinstance(m.unet, (str, os.PathLike))]}
        out = claim_output_dir(out, "evaluate", overwrite=config.overwrite, inputs=inputs)
    state.wait_for_everyone()
    try:
        return _evaluate(methods, sweep, config, out, n_real, state, extractor, scorer, desc)
    finally:
        close_run(out)


def _evaluate(methods: list[Method], sweep: Sweep, config: EvalConfig, out: Path, n_real: int, state: Any,
              extractor: nn.Module | None, scorer: Scorer | None, desc: str) -> EvalResult | None:
    from .console import progress
    from .data import load_rgb
    from .metrics import real_image_stats
    from .report import write_outputs

    conditional = config.prompts is not None
    settings = [Setting(m, wd, wc) for m in methods for wd, wc in sweep.weights(m, conditional)]

    # Real statistics first (cached): a bad real image fails the run before hours of sampling.
    real_stats = None
    if state.is_main_process and config.real is not None:
        real_stats = real_image_stats(config.real, extractor, config.resolution, cache_dir=config.stats_cache,
                                      use_cache=config.use_stats_cache)

    batches = shard_batches(config.num_images, config.batch_size, state.process_index, state.num_processes)
    mine = sum(len(b) for b in batches)
    with progress(total=mine * len(settings), desc=desc, unit="img", disable=not state.is_main_process) as bar:
        for method in methods:
            if not batches:
                break  # more processes than batches: this one has nothing to make
            pipe = load_method(method, config, state.device)
            for setting in (s for s in settings if s.method is method):
                files = image_files(out, setting, config.num_images)
                files[0].parent.mkdir(parents=True, exist_ok=True)
                for indices in batches:
                    for i, image in zip(indices, generate_batch(pipe, setting, indices, config)):
                        _save_png(image, files[i])
                    bar.update(len(indices))
            del pipe
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    rows, records = [], {}
    for setting in settings:
        files = image_files(out, setting, config.num_images)
        values, records[setting.name] = score_setting(
            files, setting, config, extractor=extractor, real_stats=real_stats, scorer=scorer, device=state.device
        )
        rows.append({"method": setting.method.name, "w_d": setting.w_d, "w_c": setting.w_c, "setting": setting.name,
                     "n_generated": config.num_images, **values, "images": f"images/{setting.name}"})
        grid = make_grid([load_rgb(p) for p in files[: config.grid_images]])
        (out / "grids").mkdir(parents=True, exist_ok=True)
        grid.save(out / "grids" / f"{setting.name}.png")

    result = EvalResult(out=out, rows=rows, metrics=records)
    record = {
        "config": dataclasses.asdict(config),
        "methods": [m.record() for m in methods],
        "sweep": dataclasses.asdict(sweep),
        "extractor": None if extractor is None else type(extractor).__name__,
        "scorer": None if scorer is None else getattr(scorer, "__name__", type(scorer).__name__),
        "n_real": n_real,
        "num_processes": state.num_processes,
    }
    write_outputs(result, config, record)
    return result


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _random_conv_seed(text: str) -> int:
    kind, _, seed = text.partition(":")
    if kind != "random-conv" or not seed.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected random-conv:SEED (e.g. random-conv:0), got {text!r}")
    return int(seed)


@dataclass
class MethodFlags:
    """The method flags of `indomain evaluate`: one method, or several from a ``--methods`` file (`methods`)."""

    prior: str | None = option(None, "prior pipeline folder or hub id (e.g. Stable Diffusion 1.5), or a single-file "
                               ".safetensors checkpoint (with --prior-config); required without --methods")
    prior_config: str | None = option(None, "for a single-file --prior: a diffusers folder of the same model (its "
                                      "configs, tokenizers and scheduler; its weights are not read)", metavar="DIR")
    domain: str | None = option(None, "domain model folder: a NullTextUNet (ours) or a text-conditioned fine-tune "
                                "(rectified / Domain Guidance) (default: none, w_d = 0)")
    unet: str | None = option(None, "fine-tuned text-conditioned UNet folder that replaces the prior's UNet "
                              "(conventional fine-tune + CFG) (default: the prior's)")
    domain_prompt: str | None = option(None, "text for a text-conditioned --domain model, e.g. its training caption "
                                       "(default: the prompt)")
    name: str | None = option(None, "method name in tables and plot (default: ours with --domain, finetune with "
                              "--unet, else prior)")
    methods: str | None = option(None, "JSON list of methods, each with Method fields: name, prior (default --prior), "
                                 "domain, unet, domain_prompt, weighted_prompts, domain_guidance_scales, "
                                 "guidance_scales, allow_pickle, prior_config (default --prior-config when prior is "
                                 "--prior's); domain_scales, the older name, is read as domain_guidance_scales",
                                 metavar="FILE.json")
    allow_pickle: bool = option(False, "allow pickle checkpoints (weights_only loading); only for files you trust")

    def resolve(self) -> list[Method]:
        """The methods these flags name: the ``--methods`` file's (the flags fill what an entry leaves out), else one."""
        if self.methods:
            return [self._from_entry(entry) for entry in self._entries()]
        if self.prior is None:
            raise ValueError("pass --prior (or --methods FILE.json)")
        name = self.name or ("ours" if self.domain else "finetune" if self.unet else "prior")
        return [Method(name=name, prior=self.prior, domain=self.domain, unet=self.unet, domain_prompt=self.domain_prompt,
                       allow_pickle=self.allow_pickle, prior_config=self.prior_config)]

    def _entries(self) -> list[dict[str, Any]]:
        assert self.methods is not None
        entries = json.loads(Path(self.methods).read_text())
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{self.methods}: expected a non-empty JSON list of methods")
        return entries

    def _from_entry(self, entry: dict[str, Any]) -> Method:
        known = {f.name for f in dataclasses.fields(Method)}
        if "domain_scales" in entry:  # the field's name before the rename: files written for it still work
            entry.setdefault("domain_guidance_scales", entry.pop("domain_scales"))
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"{self.methods}: unknown method fields {sorted(unknown)}; known: {sorted(known)}")
        if "prior" not in entry:
            entry.setdefault("prior_config", self.prior_config)
        entry.setdefault("prior", self.prior)
        entry.setdefault("allow_pickle", self.allow_pickle)
        if entry["prior"] is None:
            raise ValueError(f"{self.methods}: method {entry.get('name')!r} has no prior and --prior is not given")
        return Method(**entry)


@dataclass
class ExtractorConfig:
    """The FID/KID feature network's options (`indomain evaluate` and `indomain tune`): Inception or random-conv."""

    inception_weights: str | None = option(None, "FID Inception weights file (pt_inception-2015-12-05-6726825d.pth or "
                                           "weights-inception-2015-12-05-6726825d.pth); needed with --real",
                                           metavar="FILE")
    extractor: int | None = option(None, "instead of Inception: a fixed random conv net, for smoke tests/CI only (its "
                                   "'FID' is not comparable with any published FID)", type=_random_conv_seed,
                                   metavar="random-conv:SEED")
    inception_resize: str = option("antialias", "Inception's internal resize to 299 (default: %(default)s, "
                                   "torchmetrics>=1.8; legacy-tf = TF FID/torch-fidelity)",
                                   choices=["antialias", "legacy-tf"])

    def record(self) -> dict[str, Any]:
        """The dry run's ``extractor`` entry (its keys predate this class)."""
        return {"inception_weights": self.inception_weights, "inception_resize": self.inception_resize,
                "random_conv_seed": self.extractor}


@dataclass
class EvalCommand:
    """The flags of `indomain evaluate` around its `EvalConfig`: text files read into it, and what is printed."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("generate N images per setting (sharded over processes) and score FID/KID/CLIP; "
                                   "sweeps, plot, report")

    prompts_file: str | None = option(None, "text file with one prompt per line (blank lines skipped)", metavar="FILE")
    clip_text_file: str | None = option(None, "scored texts, one per line, aligned with the prompts file",
                                        metavar="FILE")
    dry_run: bool = option(False, "print the resolved configuration (config, methods, sweep, extractor) as JSON and "
                           "exit")
    json: bool = option(False, "print the results rows and the output paths as JSON on stdout instead of the summary "
                        "line, for scripts")


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    from .schedulers import SCHEDULERS

    p = sub.add_parser(
        "evaluate",
        help=help,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p.add_argument_group("method (one from these flags, or several from --methods)"), MethodFlags)
    g = p.add_argument_group("sweep and sampling")
    add_options(g, Sweep)
    prompts = g.add_mutually_exclusive_group()  # --prompts or --prompts-file
    add_options(prompts, EvalConfig, ["prompts"])
    add_options(prompts, EvalCommand, ["prompts_file"])
    sampling = add_options(g, EvalConfig, ["num_images", "seed", "scheduler", "steps", "batch_size", "height", "width", "dtype"])
    sampling["scheduler"].help += f"; one of {', '.join(SCHEDULERS)}"  # the names live in schedulers.py (imports diffusers)
    g = p.add_argument_group("metrics")
    add_options(g, EvalConfig, ["real"])
    add_extractor_options(g)
    add_options(g, EvalConfig, ["resolution", "metrics", "kid_subset_size", "kid_subsets", "stats_cache", "use_stats_cache",
                                "clip_model"])
    clip = g.add_mutually_exclusive_group()  # --clip-text or --clip-text-file
    add_options(clip, EvalConfig, ["clip_texts"])
    add_options(clip, EvalCommand, ["clip_text_file"])
    g = p.add_argument_group("output")
    add_options(g, EvalConfig, ["out", "overwrite", "plot_x", "plot_y", "grid_images"])
    add_options(g, EvalCommand, ["dry_run", "json"])
    p.set_defaults(func=cmd_evaluate)


def add_extractor_options(group: Any) -> None:
    """`ExtractorConfig`'s options: --inception-weights or --extractor (one of them), --inception-resize."""
    add_options(group.add_mutually_exclusive_group(), ExtractorConfig, ["inception_weights", "extractor"])
    add_options(group, ExtractorConfig, ["inception_resize"])


def extractor_from_args(args: argparse.Namespace) -> nn.Module | None:
    """The FID/KID feature network the options of `add_extractor_options` name (None without --real)."""
    return load_extractor(from_args(ExtractorConfig, args), args.real)


def load_extractor(options: ExtractorConfig, real: str | os.PathLike | None) -> nn.Module | None:
    """The FID/KID feature network ``options`` name, for the real images ``real`` (None without them)."""
    if real is None and (options.inception_weights or options.extractor is not None):
        raise ValueError("--inception-weights/--extractor need --real DIR, the real images FID/KID compare against")
    if options.extractor is not None:
        from .metrics import RandomConvFeatures

        return RandomConvFeatures(options.extractor)
    if real is None:
        return None
    import torch
    from accelerate import PartialState

    from .metrics import inception_extractor

    # Every process loads it (so a missing file fails everywhere at once), each on its own device.
    device = PartialState(cpu=not torch.cuda.is_available()).device
    return inception_extractor(options.inception_weights, resize=options.inception_resize, device=device)


def methods_from_args(args: argparse.Namespace) -> list[Method]:
    """The methods the flags of `MethodFlags` name."""
    return from_args(MethodFlags, args).resolve()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .outputs import check_paths_apart

    config, command = from_args(EvalConfig, args), from_args(EvalCommand, args)
    flags, sweep, ext = from_args(MethodFlags, args), from_args(Sweep, args), from_args(ExtractorConfig, args)
    check_paths_apart(config.out, {"--prompts-file": command.prompts_file, "--clip-text-file": command.clip_text_file,
                                   "--methods": flags.methods, "--inception-weights": ext.inception_weights})
    if command.prompts_file:  # argparse lets only one of --prompts / --prompts-file through
        config.prompts = read_lines(command.prompts_file)
    if command.clip_text_file:
        config.clip_texts = read_lines(command.clip_text_file)
    if config.real is None and (ext.inception_weights or ext.extractor is not None):
        raise ValueError("--inception-weights/--extractor need --real DIR, the real images FID/KID compare against")
    if command.dry_run:
        resolved = {"config": dataclasses.asdict(config), "methods": [m.record() for m in flags.resolve()],
                    "sweep": dataclasses.asdict(sweep), "extractor": ext.record()}
        print(to_json(resolved, indent=2))
        return 0
    result = evaluate(flags.resolve(), sweep, config, extractor=load_extractor(ext, config.real))
    if result is not None and command.json:
        print(to_json(result_record(result), indent=2))
    elif result is not None:
        print(f"wrote {len(result.rows)} settings x {config.num_images} images, results.csv/json/md, plot.png and "
              f"report.html to {result.out}")
    return 0


def result_record(result: EvalResult) -> dict[str, Any]:
    """What `indomain evaluate --json` prints: the results rows and where every output is."""
    out = result.out
    files = {name: str(out / name) for name in EVALUATE_OUTPUTS if (out / name).is_file()}
    settings = {row["setting"]: {"images": str(out / row["images"]), "grid": str(out / "grids" / f"{row['setting']}.png")}
                for row in result.rows}
    return {"out": str(out), "rows": result.rows, "files": files, "settings": settings}
