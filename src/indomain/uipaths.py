"""Paths typed into the web page (`indomain ui`), confined to its data root.

A page may be reached by someone who must not read or write the rest of the disk, so every path it names is
resolved against ``--data-root`` and refused when it leaves it: no ``..`` component, no absolute path outside,
no link that points out, no ``~``.
"""

from __future__ import annotations

import os
from pathlib import Path


class OutsideDataRoot(ValueError):
    """A path from the page that is empty or lies outside the data root."""


def confine(text: str, root: str | os.PathLike, what: str = "path") -> Path:
    """The resolved path ``text`` names under ``root``, or `OutsideDataRoot` (a ValueError) naming ``what``.

    A relative path is read from ``root``; an absolute one must lie inside it. ``..`` is refused even where it
    would stay inside, so a path means what it says; links are resolved before the check.
    """
    text = (text or "").strip()
    if not text:
        raise OutsideDataRoot(f"{what}: no path given")
    base = Path(root).resolve()
    raw = Path(text)
    if text.startswith("~") or ".." in raw.parts:
        raise OutsideDataRoot(f"{what} {text!r}: only paths inside the data root {str(base)!r} are allowed "
                              "(no '..', no '~')")
    path = (raw if raw.is_absolute() else base / raw).resolve()
    if path != base and base not in path.parents:
        raise OutsideDataRoot(f"{what} {text!r} lies outside the data root {str(base)!r}")
    return path


def shown(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` when inside it (how the page names a folder), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve())) or "."
    except ValueError:
        return str(path)
