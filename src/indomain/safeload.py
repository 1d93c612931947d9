"""Safe loading: safetensors by default, pickle checkpoints only when the user opts in.

Pickle files (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pkl``) can run arbitrary code when loaded. A
local model folder whose weights exist only as pickles is refused unless ``allow_pickle=True``; then
diffusers and transformers load them with ``torch.load(weights_only=True)``. ``trust_remote_code`` is
never passed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")

CONVERT_HINT = (
    "Convert it once to safetensors, e.g.\n"
    "  indomain convert SRC_DIR DST_DIR\n"
    "(loads with torch.load(weights_only=True) and re-saves with save_pretrained(safe_serialization=True)), "
    "or pass allow_pickle=True / --allow-pickle if you trust the file."
)


class UnsafeCheckpointError(ValueError):
    """A model folder holds only pickle weights and pickle loading was not allowed."""


def pickle_only_folders(root: str | Path) -> list[Path]:
    """Folders under ``root`` (itself and one level down) with pickle weights but no safetensors."""
    root = Path(root)
    bad = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        files = [p for p in folder.iterdir() if p.is_file()]
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles and not any(p.suffix == ".safetensors" for p in files):
            bad.append(folder)
    return bad


def check_safe(path: str | Path, allow_pickle: bool = False) -> None:
    """Raise `UnsafeCheckpointError` if a local ``path`` would need pickle loading and that was not allowed."""
    path = Path(path)
    if allow_pickle or not path.exists():
        return
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(f"{path} is a pickle checkpoint; refusing to load it.\n{CONVERT_HINT}")
        return
    bad = pickle_only_folders(path)
    if bad:
        names = ", ".join(str(p) for p in bad)
        raise UnsafeCheckpointError(f"pickle-only weights (no .safetensors) in: {names}; refusing to load them.\n{CONVERT_HINT}")


# A hub repo id: "name" or "org/name", letters, digits, "-", "_", "."; never a path that starts with / . or ~.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")  # components whose folder must hold a weights file


def check_prior(path: str | os.PathLike, allow_pickle: bool = False) -> None:
    """Check a prior before anything loads it: a hub id, or a complete local pipeline folder with safe weights.

    A local folder must have ``model_index.json``, a subfolder for each SD component it needs, and a
    weights file in each model subfolder. Errors name the missing piece.
    """
    p = Path(path).expanduser()
    if not p.exists():
        if _HUB_ID.match(str(path)) and not str(path).startswith("."):
            return  # a hub id: resolved by diffusers (from its local cache when offline)
        raise FileNotFoundError(f"prior {str(path)!r} does not exist (neither a local folder nor a hub id like 'org/name')")
    if not p.is_dir():
        raise ValueError(f"prior {str(path)!r} is a file; pass the pipeline folder (the one with model_index.json)")
    check_safe(p, allow_pickle)
    index = p / "model_index.json"
    if not index.is_file():
        raise ValueError(f"prior {str(path)!r} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        listed = json.loads(index.read_text())
    except ValueError as e:
        raise ValueError(f"prior {str(path)!r}: model_index.json is not valid JSON ({e})") from None
    for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        if name not in listed:
            raise ValueError(f"prior {str(path)!r} has no {name!r} component in model_index.json")
        if not (p / name).is_dir():
            raise ValueError(f"prior {str(path)!r} lists component {name!r} but its folder {name}/ is missing")
    suffixes = (".safetensors", *PICKLE_SUFFIXES) if allow_pickle else (".safetensors",)
    for name in WEIGHTED_COMPONENTS:
        if not any(f.suffix in suffixes for f in (p / name).iterdir()):
            raise ValueError(f"prior {str(path)!r}: {name}/ has no weights file (expected *.safetensors)")
