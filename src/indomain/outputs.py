"""Writing results: PNGs, an image grid, and a JSON record of every setting next to them."""

from __future__ import annotations

import contextlib
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

    from .version import __version__

    return {
        "indomain": __version__,
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


def read_json_object(path: str | Path, what: str = "") -> dict:
    """A JSON file that must hold an object (a dict), or a `ValueError` naming the file and what is wrong with it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file{' (' + what + ')' if what else ''}: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object{' (' + what + ')' if what else ''}, found a "
                         f"{type(value).__name__}")
    return value


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
#
# A run folder is recognised by its marker alone: `.indomain-run.json` names the command and lists every file and
# folder the run wrote, each file with its size and modification time. `--overwrite` removes exactly those entries,
# only for the same command, and only when nothing else is there and no listed file was changed since.

RUN_MARKER = ".indomain-run.json"


class OutputFolderError(ValueError):
    """An output folder cannot be used: it holds other data, overlaps an input, or is not writable."""


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded and links and ``..`` resolved (it need not exist)."""
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies below it (after resolving links)."""
    a, b = resolve_path(a), resolve_path(b)
    return a == b or b in a.parents


def _listing(names: Sequence[str], limit: int = 8) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_paths_apart(out: str | Path, inputs: dict[str, Any] | None, flag: str = "--out") -> None:
    """Refuse when an input lies inside ``out``, ``out`` inside an input, or the two are one path.

    ``inputs`` maps a flag to a path, a list of paths or None; hub ids and paths that do not exist are skipped (a
    missing input is reported by whoever reads it). Runs before anything is written or removed.
    """
    for name, value in (inputs or {}).items():
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is None or not os.path.lexists(os.path.expanduser(os.fspath(path))):
                continue
            if _inside(path, out) or _inside(out, path):
                raise OutputFolderError(
                    f"{flag} {str(out)!r} and {name} {str(path)!r} overlap (one is inside the other, or they are the "
                    f"same); choose an output folder apart from the inputs"
                )


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


def _entries(out: Path, skip: frozenset[str] = frozenset()) -> dict[str, list[int] | None]:
    """Every entry below ``out`` by relative path (folders end in ``/``): a file's [size, mtime_ns], a folder's None.
    Links are entries, never followed. Folders in ``skip`` are listed but not entered."""
    found: dict[str, list[int] | None] = {}
    for root, dirs, files in os.walk(out):
        base = Path(root).relative_to(out)
        for d in list(dirs):
            rel = (base / d).as_posix() + "/"
            found[rel] = None
            if rel in skip or os.path.islink(os.path.join(root, d)):
                dirs.remove(d)
                if os.path.islink(os.path.join(root, d)):
                    found[rel[:-1]] = _fingerprint(Path(root, d))
                    del found[rel]
        for f in files:
            rel = (base / f).as_posix()
            if rel != RUN_MARKER:
                found[rel] = _fingerprint(Path(root, f))
    return found


def _fingerprint(path: Path) -> list[int]:
    st = path.lstat()
    return [st.st_size, st.st_mtime_ns]


def read_run_record(out: str | Path) -> dict | None:
    """The marker of the run in ``out`` (``command``, ``written``, ``finished``, ``before``), or None."""
    try:
        record = json.loads((Path(out) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("command"), str) else None


def _write_run_record(out: Path, record: dict) -> None:
    atomic_write_text(out / RUN_MARKER, json.dumps(record, indent=1, sort_keys=True) + "\n")


_OPEN_RUNS: dict[Path, bool] = {}  # run folder -> whether this claim created it


def claim_output_dir(
    out: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    reuse: bool = False,
    inputs: dict[str, Any] | None = None,
    flag: str = "--out",
    overwrite_flag: str | None = "--overwrite",
) -> Path:
    """Make ``out`` ready for ``indomain <command>``, or refuse with an error that says why; returns the resolved path.

    - An input inside ``out``, ``out`` inside an input, or the same path, is always refused (`check_paths_apart`).
    - A missing or empty folder (or one whose run wrote nothing) is created and marked with ``.indomain-run.json``.
    - A folder whose marker names this command is continued with ``reuse``, or, with ``overwrite``, emptied of
      exactly the entries its marker lists: only when nothing else is there and no listed file changed since.
    - Anything else is refused with a listing of what is there. ``overwrite`` and ``reuse`` together are refused.
    Nothing is written or removed before every check passes. Call `record_outputs` when the run has written.
    """
    if overwrite and reuse:
        raise OutputFolderError(f"{overwrite_flag} and resuming cannot be combined: resume the run in {flag} "
                                f"{str(out)!r}, or replace it")
    check_paths_apart(out, inputs, flag)
    shown, out = str(out), resolve_path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{flag} {shown!r} is a file, not a folder")
    record = read_run_record(out) if out.is_dir() else None
    entries = _entries(out) if out.is_dir() else {}
    if not entries:
        record = None  # a marker alone (a run that wrote nothing, or whose files were all removed): an empty folder
    written = record.get("written") if record else None
    if (record is None or record["command"] != command) and entries:
        what = "no run record" if record is None else f"it holds a run of `indomain {record['command']}`"
        raise OutputFolderError(
            f"{flag} {shown!r} is not empty and was not written by `indomain {command}` ({what}); it holds: "
            f"{_listing(sorted(_top_level(entries)))}. Choose another folder or empty this one"
        )
    if record is not None:
        if overwrite:
            _remove_run(out, shown, command, record, entries, flag)
            record = None
        elif not reuse:
            hint = f"pass {overwrite_flag} to replace it, " if overwrite_flag else ""
            raise OutputFolderError(
                f"{flag} {shown!r} already holds a run of `indomain {command}`; {hint}"
                + ("--resume latest to continue it, " if command == "train" else "") + "or choose another folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if record is None or not isinstance(written, dict):
            record = {"command": command, "written": {}, "before": [], "finished": False}
        elif record.get("finished", True):  # continuing a finished run: what is there and unlisted stays foreign
            record["before"] = sorted(set(entries) - set(written))
        record.update(command=command, indomain=_version(), finished=False)
        _write_run_record(out, record)
    except OSError as e:
        raise OutputFolderError(f"{flag} {shown!r} is not writable: {e.strerror or e}") from None
    _OPEN_RUNS.setdefault(out, created)
    return out


def _top_level(entries: dict) -> list[str]:
    return sorted({name.split("/", 1)[0] + ("/" if "/" in name else "") for name in entries})


def _remove_run(out: Path, shown: str, command: str, record: dict, entries: dict, flag: str) -> None:
    """Remove exactly what the marker lists, after checking that nothing else is there and nothing listed changed."""
    written = record.get("written")
    if not isinstance(written, dict):
        raise OutputFolderError(f"--overwrite refused: the run in {flag} {shown!r} was written by an older indomain "
                                "that did not record its files; remove it by hand or choose another folder")
    foreign = sorted(name for name in entries if name not in written)
    changed = sorted(name for name, fp in entries.items()
                     if name in written and fp is not None and written[name] != fp and record.get("finished", True))
    if foreign or changed:
        parts = [f"files that `indomain {command}` did not write: {_listing(foreign)}"] if foreign else []
        parts += [f"files changed since the run wrote them: {_listing(changed)}"] if changed else []
        stopped = "" if record.get("finished", True) else " (the earlier run stopped before it finished)"
        raise OutputFolderError(f"--overwrite refused: {flag} {shown!r} holds {'; and '.join(parts)}{stopped}. "
                                "Move them away or choose another folder")
    for name in sorted(entries, key=lambda n: (n.endswith("/"), -n.count("/"))):  # files, then folders deepest first
        path = out / name.rstrip("/")
        path.rmdir() if name.endswith("/") else path.unlink()
    (out / RUN_MARKER).unlink(missing_ok=True)


def record_outputs(out: str | Path, *, finished: bool = True) -> None:
    """Add to the marker of ``out`` every entry the run wrote since its claim (and drop what it removed).

    Call it after a checkpoint (``finished=False``) and when the run ends. Entries that were there, and not ours, when
    the folder was claimed (``before``) are never listed."""
    out = resolve_path(out)
    record = read_run_record(out)
    if record is None:
        return
    before = {name for name in record.get("before") or () if isinstance(name, str)}
    entries = _entries(out, skip=frozenset(n for n in before if n.endswith("/")))
    written = {name: fp for name, fp in entries.items() if name not in before}
    record.update(written=written, finished=finished)
    try:
        _write_run_record(out, record)
    except OSError:
        pass  # a folder that became read-only keeps its last record; the error that made it so is reported


def close_run(out: str | Path) -> None:
    """Record what the run claimed at ``out`` in this process wrote; a folder its claim created and the run left
    empty is removed, so a refused run never blocks its corrected rerun. Not claimed here: nothing happens."""
    out = resolve_path(out)
    if out not in _OPEN_RUNS:
        return
    created = _OPEN_RUNS.pop(out)
    record_outputs(out)
    record = read_run_record(out)
    if created and record is not None and not record.get("written") and not record.get("before"):
        with contextlib.suppress(OSError):
            (out / RUN_MARKER).unlink()
            out.rmdir()


def close_runs() -> None:
    """`close_run` for every run still open in this process (the command line's last step)."""
    for out in list(_OPEN_RUNS):
        close_run(out)


def truncate_log(log_file: str | Path, step: int) -> None:
    """Keep the lines of a JSON-lines log up to ``step``, for a resumed run that writes the later ones again.
    A line that is not a record with a step (half-written by a kill) is dropped."""
    log_file = Path(log_file)
    if not log_file.is_file():
        return
    keep = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            keep.append(line)
    atomic_write_text(log_file, "".join(line + "\n" for line in keep))


def run_foreign_entries(out: str | Path) -> set[str]:
    """Entries of the run folder ``out`` that were there, not ours, when it was claimed."""
    record = read_run_record(out) or {}
    return {name for name in record.get("before") or () if isinstance(name, str)}


def _version() -> str:
    from .version import __version__

    return __version__
