"""`indomain demo`: placeholder until the emoji world lands."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    p.set_defaults(func=lambda args: 0)
