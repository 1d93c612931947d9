"""`indomain world ...`: build the emoji world (render, train the prior), check its evaluators, benchmark."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..cliargs import add_options, from_args, option, positive_float, positive_int

# the group's one line in `indomain --help` (cli.COMMANDS derives it from here; each subcommand has its config)
command_help = "the emoji world: an offline miniature of the paper's experiment"


@dataclass
class RenderConfig:
    """`indomain world render`: each field is also its option ``--field-name``."""

    out: str = option(help="output folder: <out>/<style>/<CODEPOINT>.png plus index files")
    styles: list[str] = option(["noto", "twemoji", "openmoji"], "styles (default: all three)", nargs="*")
    size: int = option(32, "image size in pixels", type=positive_int)
    limit: int | None = option(None, "render only this many emoji, evenly spaced", type=positive_int)


@dataclass
class SanityConfig:
    """`indomain world evaluator-sanity`: each field is also its option ``--field-name``."""

    evaluators: str | None = option(None, "evaluator weights folder (default: the shipped ones)")
    vae: str | None = option(None, "AutoencoderKL folder of the round trip (default: the shipped emoji prior's VAE)")
    n: int = option(110, "images per case", type=positive_int)
    seed: int = option(0, "seed of the noise case and the retrieval candidates")
    write_card: bool = option(False, "write the table under 'sanity' in the evaluators' card.json")


@dataclass
class ControlNetConfig:
    """Every setting of `indomain world train-controlnet` (each field is also its option ``--field-name``)."""

    out: str = option("outputs/emoji-controlnet-run", "run folder; rerun the same command to resume")
    steps: int = option(1600, "AdamW steps", type=positive_int)
    batch: int = option(32, "batch size", type=positive_int)
    lr: float = option(4e-4, "learning rate (AdamW)", type=positive_float)
    checkpoint_every: int = option(100, "steps between checkpoints (the fp16 export is refreshed with each)",
                                   type=positive_int)


@dataclass
class EvaluatorTrainingConfig:
    """Every setting of `indomain world train-evaluators` (each field is also its option ``--field-name``)."""

    out: str | None = option(None, "folder for evaluators.safetensors and card.json (default: the shipped "
                             "evaluators in the indomain-emoji package, which this replaces)")
    steps: int = option(1500, "AdamW steps", type=positive_int)
    batch_size: int = option(128, "batch size", type=positive_int)
    seed: int = option(0, "seed")
    validate: bool = option(True, "run the held-out validation that the card records; --no-validate skips it "
                            "(a smoke run)")
    threads: int = option(1, "torch threads; the weights depend on it", type=positive_int)


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    world = sub.add_parser("world", help=help)
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")

    p = wsub.add_parser("render", help="render emoji in the three styles to PNG folders, with the held-out split")
    add_options(p, RenderConfig)
    p.set_defaults(func=_render)

    from .prior import PriorConfig
    from .prior import __doc__ as prior_doc

    p = wsub.add_parser("train-prior", help="train the emoji prior (VAE, then text-conditioned UNet); resumable",
                        description=prior_doc,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, PriorConfig)
    p.set_defaults(func=_train_prior)

    p = wsub.add_parser("evaluator-sanity", help="score known cases (real, VAE round trip, blur, blobs, other styles, "
                        "noise) with every evaluator metric; which metrics rank them correctly")
    add_options(p, SanityConfig)
    p.set_defaults(func=_evaluator_sanity)

    p = wsub.add_parser("train-controlnet", help="train the emoji prior's edge-map ControlNet; resumable")
    add_options(p, ControlNetConfig)
    p.set_defaults(func=_train_controlnet)

    p = wsub.add_parser("train-evaluators", help="train the emoji world's evaluators (style and identity scores) on "
                        "its renders; deterministic for a seed and thread count")
    add_options(p, EvaluatorTrainingConfig)
    p.set_defaults(func=_train_evaluators)

    from .benchmark import add_parser as add_benchmark

    add_benchmark(wsub)


def _render(args: argparse.Namespace) -> int:
    from ..outputs import claim_output_dir
    from .render import render_dataset

    # a rerun adds what is missing; a folder that holds something else is refused
    claim_output_dir(args.out, "world render", reuse=True)
    c = from_args(RenderConfig, args)
    counts = render_dataset(c.out, styles=c.styles, size=c.size, limit=c.limit)
    print(f"rendered {counts} into {args.out}")
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    from ..outputs import claim_output_dir
    from ..devices import resolve_device
    from .prior import PriorConfig, train_prior

    resolve_device(args.device)  # before the output folder is claimed
    claim_output_dir(args.out, "world train-prior", reuse=True)  # rerun = resume
    out = train_prior(from_args(PriorConfig, args))
    print(f"prior pipeline: {Path(out) / 'pipeline'}")
    return 0


def _evaluator_sanity(args: argparse.Namespace) -> int:
    from .evaluator_sanity import run

    c = from_args(SanityConfig, args)
    run(c.evaluators, n=c.n, seed=c.seed, write_card=c.write_card, vae_dir=c.vae)
    return 0


def _train_controlnet(args: argparse.Namespace) -> int:
    from ..outputs import claim_output_dir
    from .controlnet import train

    config = from_args(ControlNetConfig, args)
    claim_output_dir(config.out, "world train-controlnet", reuse=True)  # rerun = resume
    out = train(Path(config.out), config.steps, config.batch, config.lr, config.checkpoint_every)
    print(f"ControlNet: {out}")
    return 0


def _train_evaluators(args: argparse.Namespace) -> int:
    from ..outputs import claim_output_dir
    from .evaluator_training import train_evaluators

    c = from_args(EvaluatorTrainingConfig, args)
    if c.out is not None:
        claim_output_dir(c.out, "world train-evaluators", reuse=True)
    out = train_evaluators(c.out, steps=c.steps, batch_size=c.batch_size, seed=c.seed, threads=c.threads,
                           validate=c.validate)
    print(f"evaluators: {out}")
    return 0
