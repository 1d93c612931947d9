"""`indomain demo`: the paper's claim, reproduced in the emoji world, offline, on a CPU, in minutes.

Starting from the shipped emoji prior (a small Stable-Diffusion-architecture model trained on Noto and Twemoji
emoji, prompted by their names), it renders the domain (OpenMoji renders of the seen emoji, no captions), trains
a null-text domain model and the conventional fine-tunes it is compared with, generates unconditional and
text-controlled in-domain samples (held-out emoji included), scores them with the shipped emoji evaluators and
writes a report comparing the method with conventional fine-tuning: ``<out>/index.html``.

Its numbers are a smoke run (24 images per setting, one seed, one weight point per method): they show that
everything runs, not which method wins. The benchmark protocol (96 images per setting x 2 seeds, the weight grid,
standard errors and seed ranges) is ``indomain world benchmark --prior PRIOR --out outputs/benchmark``.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import time
from pathlib import Path
from typing import Any, ClassVar

from . import console
from .cliargs import add_options, from_args, option
from .world.benchmark import BenchmarkConfig

DEMO_OPTIONS = ("train_steps", "num_prompts", "images_per_setting", "sample_steps", "seed", "overwrite")  # the rest: preset
_PRESET = BenchmarkConfig.demo(prior="", out="")


def _benchmark_option(name: str) -> Any:
    """The benchmark's option (its help and value type) with the demo preset's default: one home for each help."""
    meta = next(f.metadata for f in dataclasses.fields(BenchmarkConfig) if f.name == name)
    return dataclasses.field(default=getattr(_PRESET, name), metadata=meta)


@dataclasses.dataclass
class DemoConfig:
    """Every setting of `indomain demo` (each field is also its option); the rest is `BenchmarkConfig.demo`'s preset."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = "run the end-to-end emoji-world demo (offline, CPU, minutes)"

    out: str = option("outputs/demo", "output folder")
    prior: str | None = option(None, "emoji prior pipeline folder (default: the shipped one)")
    train_steps: int = _benchmark_option("train_steps")
    num_prompts: int = _benchmark_option("num_prompts")
    images_per_setting: int = _benchmark_option("images_per_setting")
    sample_steps: int = _benchmark_option("sample_steps")
    seed: int = _benchmark_option("seed")
    overwrite: bool = _benchmark_option("overwrite")


def run_demo(out: Path, train_steps: int, num_prompts: int, images_per_setting: int, sample_steps: int, seed: int,
             prior: str | None = None, num_domain_images: int | None = None, overwrite: bool = False) -> Path:
    """Run the demo into ``out``; returns the index page."""
    import torch

    from .guidance import DEFAULT_WEIGHTS
    from .outputs import make_grid
    from .pipeline import InDomainPipeline
    from .world.benchmark import DOMAIN_CAPTION, full_command, run_benchmark
    from .world.evaluators import load_evaluators
    from .world.prior import emoji_prior_dir
    from .world.render import evenly_spaced, list_emoji, split_emoji

    start = time.time()
    prior = prior or str(emoji_prior_dir())
    console.info(f"prior: {prior}")
    config = BenchmarkConfig.demo(prior, str(out), train_steps=train_steps, num_prompts=num_prompts,
                                  images_per_setting=images_per_setting, sample_steps=sample_steps, seed=seed,
                                  seeds=[seed], num_domain_images=num_domain_images, overwrite=overwrite)
    run_benchmark(config, scorer=load_evaluators().scorer(k=10))

    # an overview picture: unconditional in-domain samples, then held-out prompts under each method
    _, held_out = split_emoji(list_emoji(), seed=seed)
    names = [e.name for e in evenly_spaced(held_out, 8)]
    gens = lambda: [torch.Generator().manual_seed(seed + i) for i in range(8)]  # noqa: E731
    ours = InDomainPipeline.from_pretrained(prior, domain_unet=out / "ours")
    ours.set_progress_bar_config(disable=True)
    rows = {"domain (real OpenMoji renders)": _real(out, 8)}
    rows["ours, unconditional (w_d=2.5)"] = ours(num_images_per_prompt=8, generator=gens(), num_inference_steps=sample_steps).images
    rows["prior alone, held-out prompts"] = ours(names, domain_guidance_scale=0, guidance_scale=2.5, generator=gens(), num_inference_steps=sample_steps).images
    rows["ours, the paper's Eq. A, held-out prompts (w_d=2.5, w_c=2.5)"] = ours(
        names, generator=gens(), num_inference_steps=sample_steps).images
    w_d, w_c = DEFAULT_WEIGHTS["domain-text"]
    rows[f"ours, the default: domain-text, held-out prompts (w_d={w_d:g}, w_c={w_c:g})"] = ours(
        names, domain_guidance_scale=w_d, guidance_scale=w_c, guidance_form="domain-text", generator=gens(),
        num_inference_steps=sample_steps).images
    ft = InDomainPipeline.from_pretrained(prior, unet=ours.unet.__class__.from_pretrained(out / "finetune"))
    ft.set_progress_bar_config(disable=True)
    rows["fine-tune + CFG, held-out prompts"] = ft([f"{DOMAIN_CAPTION}, {n}" for n in names], domain_guidance_scale=0, guidance_scale=2.5, generator=gens(), num_inference_steps=sample_steps).images
    grid = make_grid([im.resize((64, 64)) for r in rows.values() for im in r], ncols=8)
    grid.save(out / "overview.png")
    body = "<p>Rows, top to bottom: " + "; ".join(html.escape(k) for k in rows) + f". Held-out prompts: {html.escape(', '.join(names))}.</p>"
    smoke = (f"<p><b>Smoke run.</b> The numbers in these reports come from {images_per_setting} images per setting, one "
             "seed and one weight point per method: they show that everything runs, not which method is better. The "
             "full benchmark (96 images per setting &times; 2 seeds, the weight grid, standard errors and seed ranges) "
             f"is <code>{html.escape(full_command(config))}</code>; the project's full tables are in docs/RESULTS.md.</p>")
    plots = "".join(f"<figure><img src='{p.name}' alt='{html.escape(p.stem)}'><figcaption>{html.escape(p.stem)} "
                    "(smoke run)</figcaption></figure>" for p in sorted(out.glob("tradeoff-*.png")))
    reports = " · ".join(f"<a href='{p.parent.name}/report.html'>{html.escape(p.parent.name)} report</a>"
                         for p in sorted(out.glob("eval-*-seed*/report.html")))  # not an older run's eval-<split>/
    index = out / "index.html"
    index.write_text(
        "<html><head><meta charset='utf-8'><title>indomain demo</title></head><body><h1>indomain demo: the emoji world</h1>"
        f"{smoke}{body}<img src='overview.png'><h2>Control against fidelity</h2>{plots}"
        f"<p><a href='RESULTS.md'>RESULTS.md</a> · {reports}</p>"
        f"<p>Took {time.time() - start:.0f} s.</p></body></html>"
    )
    console.info((out / "RESULTS.md").read_text())
    print(f"report: {index.resolve()}")
    return index


def _real(out: Path, n: int) -> list:
    from PIL import Image

    from .world.render import evenly_spaced

    files = sorted((out / "domain_images").glob("*.png"))
    return [Image.open(p).convert("RGB") for p in evenly_spaced(files, n)]


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("demo", help=help, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DemoConfig)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    c = from_args(DemoConfig, args)
    run_demo(Path(c.out), c.train_steps, c.num_prompts, c.images_per_setting, c.sample_steps, c.seed, c.prior,
             overwrite=c.overwrite)
    return 0
