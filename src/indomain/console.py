"""What a command shows while it runs: three levels, set by ``indomain --quiet`` / ``--verbose``.

* ``default``: our labelled progress bars (one per long step), our own warnings, the result. Warnings and logs from
  third-party libraries (transformers, diffusers, huggingface_hub, accelerate, torch, ...) and their loading
  bars are hidden; errors still show.
* ``quiet``: errors and the result only: no bars, no warnings, no progress messages.
* ``verbose``: everything, as the libraries print it.

`output_level` applies a level for the length of one command and then puts every setting back, so the Python API
(and a test that runs several commands) is left as it was. Our code draws its bars with `progress` and prints
progress messages with `info`; results go to stdout with plain ``print``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

QUIET, DEFAULT, VERBOSE = "quiet", "default", "verbose"
OUR_MODULES = r"indomain(\.|$)"  # a warning is ours when the line it points at is in one of our modules

_level = DEFAULT


def level() -> str:
    """The current level: ``quiet``, ``default`` or ``verbose``."""
    return _level


def progress(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar, hidden at the quiet level; ``desc`` names the step it counts."""
    from tqdm.auto import tqdm

    if _level == QUIET:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def info(message: str) -> None:
    """A progress message for people, on stderr (stdout is for results); hidden at the quiet level."""
    if _level != QUIET:
        print(message, file=sys.stderr)


def _hush_libraries() -> list[Callable[[], None]]:
    """Only errors from the libraries' loggers and none of their loading bars; returns how to undo it."""
    undo: list[Callable[[], None]] = []
    last_resort = logging.lastResort  # prints WARNING records of loggers without handlers (accelerate, peft, ...)
    if last_resort is not None:
        undo.append(lambda old=last_resort.level: last_resort.setLevel(old))
        last_resort.setLevel(logging.ERROR)
    try:
        from huggingface_hub import utils as hub
    except ImportError:
        pass
    else:
        bars, verbosity = hub.are_progress_bars_disabled(), hub.logging.get_verbosity()
        hub.disable_progress_bars()
        hub.logging.set_verbosity_error()
        undo.append(lambda: (hub.logging.set_verbosity(verbosity), None if bars else hub.enable_progress_bars()))
    for log in _library_logging():
        bars, verbosity = log.is_progress_bar_enabled(), log.get_verbosity()
        log.disable_progress_bar()
        log.set_verbosity_error()
        undo.append(lambda log=log, bars=bars, verbosity=verbosity: (
            log.set_verbosity(verbosity), log.enable_progress_bar() if bars else None))
    return undo


def _library_logging() -> list[Any]:
    """The logging modules of transformers and diffusers (the same functions in both); importing them is what
    lets a level apply to libraries a command has not imported yet, so it happens only when a command runs."""
    found = []
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging

        found.append(transformers_logging)
    with contextlib.suppress(ImportError):
        from diffusers.utils import logging as diffusers_logging

        found.append(diffusers_logging)
    return found


@contextlib.contextmanager
def output_level(new: str) -> Iterator[None]:
    """Run the body at level ``new``, then restore the warning filters, the libraries' logging and bars."""
    global _level
    if new not in (QUIET, DEFAULT, VERBOSE):
        raise ValueError(f"unknown output level {new!r}; choose quiet, default or verbose")
    old = _level
    undo: list[Callable[[], None]] = []
    with warnings.catch_warnings():
        if new == QUIET:
            warnings.simplefilter("ignore")
        elif new == DEFAULT:
            warnings.filterwarnings("ignore", module=f"(?!{OUR_MODULES})")  # third-party warnings only
        if new != VERBOSE:
            undo = _hush_libraries()
        _level = new
        try:
            yield
        finally:
            _level = old
            for step in reversed(undo):
                step()


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the input's fault: one ``error:`` line, not a traceback (NonFiniteError is a ValueError)."""
    safetensors = sys.modules.get("safetensors")  # a file that is not safetensors, read by a library directly
    return (ValueError, OSError) + ((safetensors.SafetensorError,) if safetensors else ())
