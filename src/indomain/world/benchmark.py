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
``openmoji_share`` (share judged OpenMoji style), ``fd_openmoji`` (Fréchet distance to real OpenMoji renders
in the evaluator's feature space) and ``precision_openmoji`` / ``recall_openmoji`` (k-NN precision and recall in that
space; which of these to trust for what: the evaluators' card, ``indomain world evaluator-sanity``). Results: one
`indomain.evaluate` report per prompt set plus ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..cliargs import add_options, finite_float, from_args, option, positive_float, positive_int

DOMAIN_CAPTION = "openmoji style"


@dataclass
class BenchmarkConfig:
    """Every setting of `indomain world benchmark` (each field is also its option ``--field-name``)."""

    prior: str = option(help="the emoji prior pipeline folder")
    out: str = option(help="output folder (models, reports, RESULTS.md)")
    resolution: int = option(32, "image size in pixels of the domain renders and of training (the emoji prior's size)",
                             type=positive_int)
    train_steps: int = option(400, "training steps per model: the domain model and each baseline", type=positive_int)
    train_batch_size: int = option(16, "training batch size", type=positive_int)
    learning_rate: float = option(1e-4, "learning rate of the full-weight models; the LoRA baseline uses 10x",
                                  type=positive_float)
    lora_rank: int = option(8, "LoRA rank of the LoRA baseline", type=positive_int)
    num_domain_images: int | None = option(None, "domain images (default: every seen emoji)", type=positive_int)
    num_prompts: int = option(24, "prompts per set (seen and held-out)", type=positive_int)
    images_per_setting: int = option(48, "images per scored setting", type=positive_int)
    sample_steps: int = option(20, "sampler steps", type=positive_int)
    domain_scales: list[float] = option([0.0, 1.0, 2.5], "w_d sweep", type=finite_float, nargs="*")
    guidance_scales: list[float] = option([2.5, 5.0], "w_c sweep", type=finite_float, nargs="*")
    seed: int = option(0, "seed of the split, the training runs and the sampling")
    overwrite: bool = option(False, "start over in --out, replacing an earlier benchmark or demo (default: continue "
                             "an earlier run there)")

    @classmethod
    def demo(cls, prior: str, out: str, **changes: Any) -> BenchmarkConfig:
        """The `indomain demo` preset: shorter training and fewer images (CPU minutes), one w_d > 0 and one w_c."""
        preset = dict(train_steps=300, num_prompts=12, images_per_setting=24, domain_scales=[0.0, 2.5],
                      guidance_scales=[2.5])
        return cls(prior=prior, out=out, **(preset | changes))


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
        cols = [c for c in ("method", "w_d", "w_c", "control_top1", "openmoji_share", "fd_openmoji", "precision_openmoji",
                            "recall_openmoji") if c in rows[0]]
        lines += [f"## {split} prompts", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            lines.append("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
        lines += ["", f"Report: `{Path(result.out) / 'report.html'}`", ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def add_parser(wsub: argparse._SubParsersAction) -> None:
    p = wsub.add_parser("benchmark", help="compare prior, fine-tuning (CFG, LoRA, rectified) and ours in the emoji world",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, BenchmarkConfig)
    p.add_argument("--no-evaluators", action="store_true", help="skip the emoji evaluators (smoke runs)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    scorer = None
    if not args.no_evaluators:
        from .evaluators import load_evaluators

        scorer = load_evaluators().scorer(k=10)
    out = run_benchmark(from_args(BenchmarkConfig, args), scorer)
    print(f"results: {out / 'RESULTS.md'}")
    return 0
