"""`indomain world ...`: build the emoji world (render, train the prior), check its evaluators, benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliargs import add_options, from_args, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the emoji world: an offline miniature of the paper's experiment")
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")

    p = wsub.add_parser("render", help="render emoji in the three styles to PNG folders, with the held-out split")
    p.add_argument("--out", required=True, help="output folder: <out>/<style>/<CODEPOINT>.png plus index files")
    p.add_argument("--styles", nargs="*", default=["noto", "twemoji", "openmoji"], help="styles (default: all three)")
    p.add_argument("--size", type=positive_int, default=32, help="image size in pixels (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, default=None, help="render only this many emoji, evenly spaced")
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
    p.add_argument("--evaluators", default=None, help="evaluator weights folder (default: the shipped ones)")
    p.add_argument("--vae", default=None, help="AutoencoderKL folder of the round trip (default: the shipped emoji "
                   "prior's VAE)")
    p.add_argument("--n", type=positive_int, default=110, help="images per case (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise case and the retrieval candidates (default: %(default)s)")
    p.add_argument("--write-card", action="store_true",
                   help="write the table under 'sanity' in the evaluators' card.json")
    p.set_defaults(func=_evaluator_sanity)

    from .benchmark import add_parser as add_benchmark

    add_benchmark(wsub)


def _render(args: argparse.Namespace) -> int:
    from ..outputs import claim_output_dir
    from .render import render_dataset

    # a rerun adds what is missing; a folder that holds something else is refused
    claim_output_dir(args.out, "world render", reuse=True)
    counts = render_dataset(args.out, styles=args.styles, size=args.size, limit=args.limit)
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

    run(args.evaluators, n=args.n, seed=args.seed, write_card=args.write_card, vae_dir=args.vae)
    return 0
