"""Safe loading: safetensors by default, pickle checkpoints only when the user opts in.

Pickle files (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pkl``) can run arbitrary code when loaded. A
local model folder whose weights exist only as pickles is refused unless ``allow_pickle=True``; then
diffusers and transformers load them with ``torch.load(weights_only=True)``. ``trust_remote_code`` is
never passed.
"""

from __future__ import annotations

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
