"""The `indomain` command line: generate, train, convert, demo, ...

It starts fast: no command module imports torch at import time, and `build_parser` builds only the parser of the
command being run; the others appear in ``indomain --help`` by name and their config's one line of help (`COMMANDS`).
"""

from __future__ import annotations

import argparse
from functools import partial
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from pathlib import Path

from . import console
from .cliargs import add_options, expand_home, from_args, option
from .generate import DESCRIPTION, add_edit_parser, add_generate_parser

@dataclass
class ConvertConfig:
    """Every setting of `indomain convert` (each field is also its argument)."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("copy a model folder with its pickle weights (.bin/.ckpt/.pt) re-saved as "
                                   "safetensors")

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

    presets = {"emoji": partial(_emoji_tune_preset, domain="openmoji")}
    presets |= {f"emoji-{name}": partial(_emoji_tune_preset, domain=name) for name in EMOJI_DERIVED_DOMAINS}
    add_parser(sub, help, presets=presets)


#: `tune --scorer emoji-<name>`: the derived domains of `indomain.world.domains.DOMAINS`, named here so that `--help`
#: loads none of the world (tests/test_tune.py checks that the two lists agree)
EMOJI_DERIVED_DOMAINS = ("sepia", "sticker")


def _emoji_tune_preset(config: Any, domain: str) -> Any:
    """`tune --scorer emoji[-DOMAIN]`: wired here, since the emoji world sits above `tune` (docs/ARCHITECTURE.md)."""
    from .world.tuning import emoji_preset

    return emoji_preset(config, domain)


def _add_world(sub: argparse._SubParsersAction, help: str) -> None:
    from .world.cli import add_parser

    add_parser(sub, help)


def _add_ui(sub: argparse._SubParsersAction, help: str) -> None:
    from .ui import add_parser

    add_parser(sub, help)


def _add_3d(sub: argparse._SubParsersAction, help: str) -> None:
    from .text3d import add_parser

    add_parser(sub, help)


# name -> (where its settings live, "module:Config", and what builds its full parser). The command's one line of help
# is that config's `command_help` (`command_help` below), so a command's options and its line have one home;
# `world`, a group of commands, keeps its line on its module.
COMMANDS: dict[str, tuple[str, Callable[[argparse._SubParsersAction, str], None]]] = {
    "generate": ("generate:GenerateConfig", add_generate_parser),
    "edit": ("generate:EditConfig", add_edit_parser),
    "train": ("train:TrainConfig", _add_train),
    "distill": ("distill:DistillConfig", _add_distill),
    "convert": ("cli:ConvertConfig", add_convert_parser),
    "export": ("export:ExportConfig", _add_export),
    "demo": ("demo:DemoConfig", _add_demo),
    "evaluate": ("evaluate:EvalCommand", _add_evaluate),
    "tune": ("tune:TuneConfig", _add_tune),
    "world": ("world.cli", _add_world),
    "ui": ("ui:UIConfig", _add_ui),
    "3d": ("text3d:Text3DConfig", _add_3d),
}


def command_help(name: str) -> str:
    """The one line `indomain --help` shows for command ``name``: its config's ``command_help`` (the command modules
    load no torch at import, so listing them all stays fast)."""
    module, _, config = COMMANDS[name][0].partition(":")
    found = importlib.import_module(f"{__package__}.{module}")
    return (getattr(found, config) if config else found).command_help


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
    for name, (_, add) in COMMANDS.items():
        if named is None or name == named:
            add(sub, command_help(name))
        else:
            sub.add_parser(name, help=command_help(name))
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
