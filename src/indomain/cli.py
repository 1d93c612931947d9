"""The `indomain` command line: generate, train, convert, demo, ...

It starts fast: this module imports no torch, and `build_parser` imports only the module of the command being
run; the others appear in ``indomain --help`` by name and one line of help (`COMMANDS`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from . import console
from .cliargs import add_options, expand_home, from_args, option
from .generate import DESCRIPTION, add_edit_parser, add_generate_parser

@dataclass
class ConvertConfig:
    """Every setting of `indomain convert` (each field is also its argument)."""

    src: str = option(help="source folder (a pipeline with model_index.json, or a single model with config.json)",
                      positional=True)
    dst: str = option(help="destination folder (new or empty)", positional=True)


def add_convert_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "convert",
        help=help,
        description="Copy SRC to DST, re-saving every pickle weights file as safetensors. Each file is read with "
        "torch.load(weights_only=True), which refuses anything but tensors; a file that holds more is refused "
        "with its name. Works on pipeline folders, single model folders and folders that mix both formats.",
    )
    add_options(p, ConvertConfig)
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    return convert(from_args(ConvertConfig, args))


def convert(config: ConvertConfig) -> int:
    """`indomain convert`: SRC copied to DST with every pickle weights file re-saved as safetensors."""
    from .outputs import claim_output_dir
    from .safeload import convert_folder

    if not Path(config.src).is_dir():
        raise FileNotFoundError(f"{config.src!r} is not a folder")
    claim_output_dir(config.dst, "convert", inputs={"SRC": config.src}, flag="DST", overwrite_flag=None)
    for line in convert_folder(config.src, config.dst):
        console.info(line)
    print(f"saved safetensors copy of {config.src} to {config.dst}")
    return 0


def _add_train(sub: argparse._SubParsersAction, help: str) -> None:
    from .train import add_parser

    add_parser(sub, help)


def _add_distill(sub: argparse._SubParsersAction, help: str) -> None:
    from .distill import add_parser

    add_parser(sub, help)


def _add_export(sub: argparse._SubParsersAction, help: str) -> None:
    from .export import add_parser

    add_parser(sub, help)


def _add_demo(sub: argparse._SubParsersAction, help: str) -> None:
    from .demo import add_parser

    add_parser(sub, help)


def _add_evaluate(sub: argparse._SubParsersAction, help: str) -> None:
    from .evaluate import add_parser

    add_parser(sub, help)


def _add_tune(sub: argparse._SubParsersAction, help: str) -> None:
    from .tune import add_parser

    add_parser(sub, help, presets={"emoji": _emoji_tune_preset})


def _emoji_tune_preset(config: Any) -> Any:
    """`tune --scorer emoji`: wired here, since the emoji world sits above `tune` (docs/ARCHITECTURE.md)."""
    from .world.tuning import emoji_preset

    return emoji_preset(config)


def _add_world(sub: argparse._SubParsersAction, help: str) -> None:
    from .world.cli import add_parser

    add_parser(sub, help)


def _add_ui(sub: argparse._SubParsersAction, help: str) -> None:
    from .ui import add_parser

    add_parser(sub, help)


def _add_3d(sub: argparse._SubParsersAction, help: str) -> None:
    from .text3d import add_parser

    add_parser(sub, help)


# name -> (its one line of help, what builds its full parser): the one home of that line, which `indomain --help`
# shows without importing the command and which the command's own parser is given
COMMANDS: dict[str, tuple[str, Callable[[argparse._SubParsersAction, str], None]]] = {
    "generate": ("sample in-domain images from a prior plus a domain model", add_generate_parser),
    "edit": ("edit images into the domain: SDEdit or inversion, optionally inpainting a mask", add_edit_parser),
    "train": ("train a domain model (or a conventional fine-tune baseline) on a folder of unlabeled images", _add_train),
    "distill": ("distil the prior + domain model's guidance (Eq. A) into a student that samples in one UNet call per "
                "step", _add_distill),
    "convert": ("copy a model folder with its pickle weights (.bin/.ckpt/.pt) re-saved as safetensors", add_convert_parser),
    "export": ("write a domain model as a plain diffusers UNet or a single-file checkpoint (for diffusers, ComfyUI, "
               "A1111)", _add_export),
    "demo": ("run the end-to-end emoji-world demo (offline, CPU, minutes)", _add_demo),
    "evaluate": ("generate N images per setting (sharded over processes) and score FID/KID/CLIP; sweeps, plot, report",
                 _add_evaluate),
    "tune": ("choose the weights (w_d, w_c) for a goal on probe prompts and check them on held-out prompts", _add_tune),
    "world": ("the emoji world: an offline miniature of the paper's experiment", _add_world),
    "ui": ("open a web page to generate, train, edit and compare results in a browser (gradio)", _add_ui),
    "3d": ("text-to-3D: optimise a small voxel radiance field by score distillation (prior + domain model)", _add_3d),
}


def _add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=console.QUIET, default=default,
                       help="print only errors and the result: no progress bars, warnings or messages")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=console.VERBOSE, default=default,
                       help="also show what the libraries print: their warnings, logs and loading bars (hidden by "
                            "default)")


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand parser below ``parser`` (``world render`` too)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subcommands(child)]
    return found


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `indomain` parser. With ``argv``, only the command it names is built (its module imported); the others
    are listed by name and help. Without, every command is built."""
    named = None if argv is None else next((str(a) for a in argv if not str(a).startswith("-")), "")
    parser = argparse.ArgumentParser(
        prog="indomain", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_output_options(parser, console.DEFAULT)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add) in COMMANDS.items():
        if named is None or name == named:
            add(sub, help)
        else:
            sub.add_parser(name, help=help)
    for child in _subcommands(parser):  # --quiet/--verbose also after the command; SUPPRESS keeps an earlier one
        _add_output_options(child, argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (bad input, divergence, unwritable folders) print one ``error:`` line."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    expand_home(args)  # `--out=~/x`: the shell leaves that ~ alone
    try:
        with console.output_level(args.verbosity):
            return args.func(args)
    except console.expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from .outputs import close_runs

        close_runs()  # record what each output folder holds; a refused run leaves no folder behind


if __name__ == "__main__":
    sys.exit(main())
