"""Writing results: PNGs, an image grid, and a JSON record of every setting next to them."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import PIL.Image


def make_grid(images: Sequence[PIL.Image.Image], ncols: int | None = None, pad: int = 2) -> PIL.Image.Image:
    """Tile equally sized images into one RGB image on a white background."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    nrows = math.ceil(len(images) / ncols)
    grid = PIL.Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad) + pad), "white")
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        grid.paste(img.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def environment() -> dict[str, str]:
    """Versions that decide whether a result can be reproduced."""
    import diffusers
    import torch
    import transformers

    import indomain

    return {
        "indomain": indomain.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON values only: strict parsers reject NaN and Infinity, so NaN (a missing value) becomes ``null`` and
    an infinity the string "Infinity" or "-Infinity" (a diffusers scheduler config holds ``-inf``); numpy/torch
    scalars become numbers, arrays lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return _jsonable(value.item())  # a numpy or 0-d torch scalar
    if hasattr(value, "tolist") and hasattr(value, "ndim"):
        return _jsonable(value.tolist())
    return str(value)


def to_json(value: Any, indent: int | None = None, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (see `_jsonable`); every JSON file and ``--json`` output goes through here."""
    return json.dumps(_jsonable(value), indent=indent, allow_nan=False, **kwargs)


def write_record(path: str | Path, settings: dict[str, Any], **extra: Any) -> Path:
    """Write ``{"settings": ..., "environment": ..., **extra}`` as pretty, strict JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(sys.argv), "settings": settings, "environment": environment(), **extra}
    path.write_text(to_json(record, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------
# Output folders: never write into, or delete, what is not ours

RUN_MARKER = ".indomain-run.json"


class OutputFolderError(ValueError):
    """An output folder cannot be used: it holds other data, overlaps an input, or is not writable."""


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies below it (after resolving links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _listing(entries: Sequence[Path], limit: int = 8) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" (+{len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(names) + more


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A hidden temporary sibling of ``path`` to write a file or a folder into; it replaces ``path`` in one rename
    when the block succeeds. A kill leaves at most that temporary, never half of ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def claim_output_dir(
    out: str | Path,
    command: str,
    *,
    owned: Sequence[str],
    record: str | None = None,
    overwrite: bool = False,
    reuse: bool = False,
    inputs: dict[str, str | Path | None] | None = None,
    flag: str = "--out",
) -> Path:
    """Make ``out`` ready for ``indomain <command>``, or refuse with an error that says why.

    - An input folder inside ``out``, or ``out`` inside an input, is always refused: a rerun would read
      or delete its own outputs.
    - A missing or empty folder is created and marked with ``.indomain-run.json``.
    - A folder this command wrote before (its marker, or its run ``record`` file, is present) is
      continued with ``reuse``, or replaced with ``overwrite``, but only when every entry in it matches
      one of the ``owned`` glob patterns: a file the run did not write is never deleted.
    - Anything else is refused with a listing of what is there.
    Nothing is written before every check passes.
    """
    out = Path(out)
    for name, path in (inputs or {}).items():
        if path is None or not Path(path).exists():
            continue
        if _inside(Path(path), out) or _inside(out, Path(path)):
            raise OutputFolderError(
                f"{flag} {str(out)!r} and {name} {str(path)!r} overlap (one is inside the other); "
                f"choose an output folder outside the input"
            )
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{flag} {str(out)!r} is a file, not a folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries:
        marker = out / RUN_MARKER
        ours = (marker.is_file() and _marker_command(marker) == command) or (
            record is not None and (out / record).is_file()
        )
        if not ours:
            raise OutputFolderError(
                f"{flag} {str(out)!r} is not empty and was not written by `indomain {command}` "
                f"(no {RUN_MARKER}{'' if record is None else ' or ' + record}); it holds: {_listing(entries)}. "
                "Choose another folder or empty this one"
            )
        if overwrite:
            foreign = [p for p in entries if p.name != RUN_MARKER and not any(fnmatch.fnmatch(p.name, g) for g in owned)]
            if foreign:
                raise OutputFolderError(
                    f"--overwrite refused: {flag} {str(out)!r} holds files that `indomain {command}` did not write: "
                    f"{_listing(foreign)}. Move them away or choose another folder"
                )
            shutil.rmtree(out)
        elif not reuse:
            raise OutputFolderError(
                f"{flag} {str(out)!r} already holds a run of `indomain {command}`; pass --overwrite to replace it"
                + (", --resume latest to continue it" if command == "train" else "")
                + ", or choose another folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        marker = out / RUN_MARKER
        if not marker.is_file():
            atomic_write_text(marker, json.dumps({"command": command, "indomain": _version()}) + "\n")
    except OSError as e:
        raise OutputFolderError(f"{flag} {str(out)!r} is not writable: {e.strerror or e}") from None
    return out


def _marker_command(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def _version() -> str:
    import indomain

    return indomain.__version__
