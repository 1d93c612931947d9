"""`indomain world benchmark`: the paper's central comparison, in the emoji world.

Given the emoji prior (trained on Noto + Twemoji, prompted by emoji names) and the domain (OpenMoji renders of
the *seen* emoji, images only), it trains and compares:

1. ``prior``: the prior alone, prompted ("red apple");
2. ``finetune-cfg`` / ``finetune-lora-cfg``: conventional fine-tuning of the prior's text UNet on the domain images
   with a fixed domain caption, then CFG with prompts "<caption>, <name>" (full and LoRA);
3. ``rectified``: the same full fine-tune with the unconditional prediction taken from the prior (Domain Guidance);
4. ``ours``: the null-text domain model with guidance-decoupled sampling, swept over (w_d, w_c).

Every method is scored on prompts of *seen* emoji and of *held-out* emoji (never in domain training) with the
project's emoji evaluators: ``control_top1`` (is it the prompted emoji: top-1 among 10 candidates),
``openmoji_share`` (share judged OpenMoji style) and ``fd_openmoji`` (Fréchet distance to real OpenMoji renders
in the evaluator's feature space). Results: one `indomain.evaluate` report per prompt set plus ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cliargs import finite_float, positive_int

DOMAIN_CAPTION = "openmoji style"


@dataclass
class BenchmarkConfig:
    prior: str  # the emoji prior pipeline folder
    out: str
    resolution: int = 32
    train_steps: int = 400  # domain model and each baseline
    train_batch_size: int = 16
    learning_rate: float = 1e-4  # full weights; LoRA uses 10x
    lora_rank: int = 8
    num_domain_images: int | None = None  # None: every seen emoji
    num_prompts: int = 24  # per prompt set (seen / held-out)
    images_per_setting: int = 48
    sample_steps: int = 20
    domain_scales: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.5])
    guidance_scales: list[float] = field(default_factory=lambda: [2.5, 5.0])
    seed: int = 0
    overwrite: bool = False  # replace an earlier benchmark (or demo) in `out` instead of continuing it


BENCHMARK_OUTPUTS = ("domain_images", "latent_cache", "ours", "finetune", "finetune-lora", "eval-*", "RESULTS.md",
                     "overview.png", "index.html")  # all that `--overwrite` may remove


def render_domain(out: Path, resolution: int, limit: int | None, seed: int) -> tuple[Path, list[str], list[str]]:
    """OpenMoji renders of the seen emoji (the only domain data) plus the seen and held-out prompt names."""
    from .render import evenly_spaced, list_emoji, render, split_emoji

    seen, held_out = split_emoji(list_emoji(), seed=seed)
    folder = out / "domain_images"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = evenly_spaced(seen, limit)
    for emoji in chosen:
        path = folder / f"{emoji.codepoint}.png"
        if not path.exists():
            render(emoji, "openmoji", size=resolution).save(path)
    return folder, [e.name for e in seen], [e.name for e in held_out]


def run_benchmark(config: BenchmarkConfig, scorer: Any = None) -> Path:
    """Train every method, evaluate them on seen and held-out prompts, write the reports and RESULTS.md."""
    from ..evaluate import EvalConfig, Method, Sweep, evaluate
    from ..train import TrainConfig, train
    from .render import evenly_spaced

    from ..outputs import claim_output_dir

    start = time.time()
    out = claim_output_dir(config.out, "world benchmark", owned=BENCHMARK_OUTPUTS, record="RESULTS.md",
                           overwrite=config.overwrite, reuse=True)  # a rerun continues: trained models are kept
    domain, seen, held_out = render_domain(out, config.resolution, config.num_domain_images, config.seed)

    def fit(name: str, **kw: Any) -> Path:
        folder = out / name
        if not (folder / "config.json").is_file():
            settings = dict(prior=config.prior, images=str(domain), output=str(folder), resolution=config.resolution,
                            train_batch_size=config.train_batch_size, max_train_steps=config.train_steps,
                            learning_rate=config.learning_rate, ema_decay=0.99, checkpointing_steps=config.train_steps,
                            checkpoints_total_limit=1, seed=config.seed, overwrite=True,
                            latent_cache=str(out / "latent_cache"))  # one cache for every model: same images
            train(TrainConfig(**(settings | kw)))
        return folder

    ours = fit("ours")
    finetune = fit("finetune", baseline=True, caption=DOMAIN_CAPTION)
    lora = fit("finetune-lora", baseline=True, caption=DOMAIN_CAPTION, lora_rank=config.lora_rank,
               learning_rate=10 * config.learning_rate)
    template = DOMAIN_CAPTION + ", {}"
    methods = [
        Method("prior", config.prior, domain_scales=[0.0]),
        Method("finetune-cfg", config.prior, unet=finetune, prompt_template=template, domain_scales=[0.0]),
        Method("finetune-lora-cfg", config.prior, unet=lora, prompt_template=template, domain_scales=[0.0]),
        Method("rectified", config.prior, domain=finetune, prompt_template=template, guidance_scales=[0.0],
               domain_scales=config.guidance_scales),
        Method("ours", config.prior, domain=ours),
    ]
    sweep = Sweep(domain_scales=config.domain_scales, guidance_scales=config.guidance_scales)
    results = {}
    for split, names in (("seen", seen), ("held-out", held_out)):
        prompts = evenly_spaced(names, config.num_prompts)
        eval_config = EvalConfig(out=out / f"eval-{split}", num_images=config.images_per_setting, prompts=prompts,
                                 seed=config.seed, scheduler="dpm++", steps=config.sample_steps, batch_size=16,
                                 metrics=(), plot_x="control_top1" if scorer else None,
                                 plot_y="openmoji_share" if scorer else None, overwrite=True)
        results[split] = evaluate(methods, sweep, eval_config, scorer=scorer)
    write_results(out, config, results, time.time() - start)
    return out


def write_results(out: Path, config: BenchmarkConfig, results: dict, seconds: float) -> Path:
    """RESULTS.md: one table per prompt set, with the command and settings."""
    import sys

    lines = ["# Emoji world: fine-tuning vs guidance-decoupled prior preservation", "",
             f"Command: `{' '.join(sys.argv)}`", "", f"Settings: `{json.dumps(asdict(config))}`", "",
             f"Wall time: {seconds / 60:.1f} min.", ""]
    for split, result in results.items():
        rows = result.rows
        cols = [c for c in ("method", "w_d", "w_c", "control_top1", "openmoji_share", "fd_openmoji") if c in rows[0]]
        lines += [f"## {split} prompts", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            lines.append("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
        lines += ["", f"Report: `{Path(result.out) / 'report.html'}`", ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def add_parser(wsub: argparse._SubParsersAction) -> None:
    d = BenchmarkConfig(prior="", out="")
    p = wsub.add_parser("benchmark", help="compare prior, fine-tuning (CFG, LoRA, rectified) and ours in the emoji world",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="the emoji prior pipeline folder")
    p.add_argument("--out", required=True, help="output folder (models, reports, RESULTS.md)")
    p.add_argument("--train-steps", type=positive_int, default=d.train_steps, help="training steps per model (default: %(default)s)")
    p.add_argument("--num-domain-images", type=positive_int, default=None, help="domain images (default: every seen emoji)")
    p.add_argument("--num-prompts", type=positive_int, default=d.num_prompts, help="prompts per set (default: %(default)s)")
    p.add_argument("--images-per-setting", type=positive_int, default=d.images_per_setting, help="images per setting (default: %(default)s)")
    p.add_argument("--sample-steps", type=positive_int, default=d.sample_steps, help="sampler steps (default: %(default)s)")
    p.add_argument("--domain-scales", type=finite_float, nargs="*", default=d.domain_scales, help="w_d sweep (default: %(default)s)")
    p.add_argument("--guidance-scales", type=finite_float, nargs="*", default=d.guidance_scales, help="w_c sweep (default: %(default)s)")
    p.add_argument("--no-evaluators", action="store_true", help="skip the emoji evaluators (smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="start over in --out (default: continue an earlier run there)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    scorer = None
    if not args.no_evaluators:
        from .evaluators import load_evaluators

        scorer = load_evaluators().scorer(k=10)
    config = BenchmarkConfig(prior=args.prior, out=args.out, train_steps=args.train_steps,
                             num_domain_images=args.num_domain_images, num_prompts=args.num_prompts,
                             images_per_setting=args.images_per_setting, sample_steps=args.sample_steps,
                             domain_scales=args.domain_scales, guidance_scales=args.guidance_scales, seed=args.seed,
                             overwrite=args.overwrite)
    out = run_benchmark(config, scorer)
    print(f"results: {out / 'RESULTS.md'}")
    return 0
