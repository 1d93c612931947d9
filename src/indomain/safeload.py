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
from typing import Any

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
    if not path.exists():
        return
    # every safetensors file must at least have a readable header: a bad one is named here, not deep in a library
    files = [path] if path.is_file() else [*path.glob("*.safetensors"), *path.glob("*/*.safetensors")]
    for file in files:
        if file.suffix == ".safetensors":
            safetensors_header(file)
    if allow_pickle:
        # read every pickle once with weights_only=True ourselves, so a refusal names the file and never
        # suggests the unsafe weights_only=False that torch's own message offers
        files = [path] if path.is_file() else [p for p in sorted(path.glob("**/*")) if p.is_file()]
        for file in files:
            if file.suffix in PICKLE_SUFFIXES:
                load_pickle_weights(file)
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
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_prior_config(prior: str | os.PathLike, config: str | os.PathLike | None, required: bool = False) -> None:
    """``--prior-config`` goes with a single-file ``--prior`` only, and must be a diffusers pipeline folder (or a hub
    id); ``required``: a single file needs one (without it diffusers looks its default config up on the hub)."""
    single = Path(prior).expanduser().is_file()
    if config is None:
        if single and required:
            raise ValueError(f"--prior {prior} is a single file: pass --prior-config DIR, a diffusers folder of the same "
                             "model (its configs, tokenizers and scheduler; its weights are not read)")
        return
    if not single:
        raise ValueError("--prior-config is for a single-file --prior (a .safetensors checkpoint)")
    folder = Path(config).expanduser()
    if folder.exists() and not (folder / "model_index.json").is_file():
        raise ValueError(f"--prior-config {config}: not a diffusers pipeline folder (no model_index.json)")


def check_prior(path: str | os.PathLike, allow_pickle: bool = False) -> None:
    """Check a prior before anything loads it: a hub id, or a complete local pipeline folder with safe weights.

    A local folder must have ``model_index.json``, a subfolder for each SD component it needs, and a
    weights file in each model subfolder. Errors name the missing piece.
    """
    p = Path(path).expanduser()
    if not p.exists():
        if HUB_ID.match(str(path)) and not str(path).startswith("."):
            return  # a hub id: resolved by diffusers (from its local cache when offline)
        raise FileNotFoundError(f"prior {str(path)!r} does not exist (neither a local folder nor a hub id like 'org/name')")
    if p.is_file():  # a single-file checkpoint (A1111 / ComfyUI style), opened by diffusers' from_single_file
        if p.suffix != ".safetensors":
            raise ValueError(f"prior {str(path)!r} is a single-file checkpoint that is not .safetensors; only safetensors "
                             "single files are read (convert it, e.g. with a tool you trust, or pass a pipeline folder)")
        return
    if not p.is_dir():
        raise ValueError(f"prior {str(path)!r} is neither a file nor a folder")
    check_safe(p, allow_pickle)
    index = p / "model_index.json"
    if not index.is_file():
        raise ValueError(f"prior {str(path)!r} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        listed = json.loads(index.read_text())
    except ValueError as e:
        raise ValueError(f"prior {str(path)!r}: model_index.json is not valid JSON ({e})") from None
    from .families import family_of

    family = family_of(listed)
    required = ("vae", *family.text_encoders, *map(family.tokenizer, family.text_encoders), family.denoiser, "scheduler")
    for name in required:
        if name not in listed:
            raise ValueError(f"prior {str(path)!r} has no {name!r} component in model_index.json")
        if not (p / name).is_dir():
            raise ValueError(f"prior {str(path)!r} lists component {name!r} but its folder {name}/ is missing")
    suffixes = (".safetensors", *PICKLE_SUFFIXES) if allow_pickle else (".safetensors",)
    for name in ("vae", family.denoiser, *family.text_encoders):
        if not any(f.suffix in suffixes for f in (p / name).iterdir()):
            raise ValueError(f"prior {str(path)!r}: {name}/ has no weights file (expected *.safetensors)")


def _safetensors_name(name: str) -> str:
    """The safetensors file name diffusers/transformers look for in place of a pickle file ``name``."""
    stem, _, suffix = name.partition(".")  # "pytorch_model.fp16.bin" -> "pytorch_model", "fp16.bin"
    rest = suffix.rsplit(".", 1)[0] if "." in suffix else ""  # the variant ("fp16") or nothing
    stem = stem.replace("pytorch_model", "model", 1) if stem.startswith("pytorch_model") else stem
    return ".".join(x for x in (stem, rest, "safetensors") if x)


def load_pickle_weights(path: str | Path) -> dict:
    """A pickle weights file as a flat {name: tensor} dict, through ``torch.load(weights_only=True)`` only.

    A file that holds anything other than tensors and plain containers is refused with an error naming it.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        # keep torch's diagnosis ("Unsupported global: GLOBAL posix.system"), not its advice to load unsafely
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?: was not an allowed global|\.? *$)", str(e), re.M)
        reason = found.group(1) if found else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused: it does not load as plain tensors ({reason[:200]}). It may be corrupt, or hold code; "
            "indomain never loads such a file. Ask its author for a .safetensors version"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # original Stable Diffusion .ckpt layout
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UnsafeCheckpointError(f"{path}: holds no tensors; not a weights file")
    return tensors


def convert_folder(src: str | Path, dst: str | Path) -> list[str]:
    """Copy ``src`` to ``dst`` with every pickle weights file re-saved as safetensors; returns what it did.

    Files are converted one by one (``torch.load(weights_only=True)``), so a folder that mixes
    safetensors and pickle files works: a pickle whose safetensors twin exists is left out.
    """
    import shutil

    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{str(src)!r} is not a folder")
    report: list[str] = []
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = file.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if file.name.endswith(".bin.index.json"):  # sharded pickle index: point it at the safetensors shards
            index = json.loads(file.read_text())
            index["weight_map"] = {k: _safetensors_name(v) for k, v in index.get("weight_map", {}).items()}
            name = _safetensors_name(file.name[: -len(".index.json")]) + ".index.json"
            (target.parent / name).write_text(json.dumps(index, indent=2))
            report.append(f"{rel}: index rewritten as {name}")
        elif file.suffix in PICKLE_SUFFIXES:
            name = _safetensors_name(file.name)
            if (file.parent / name).exists():
                report.append(f"{rel}: left out, {name} is already there")
                continue
            tensors = load_pickle_weights(file)
            save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, target.parent / name)
            report.append(f"{rel}: converted to {name} ({len(tensors)} tensors)")
        else:
            shutil.copy2(file, target)
    if not report:
        report.append("no pickle weights found: the copy is identical")
    return report


class UnreadableWeightsError(ValueError):
    """A file that should be safetensors does not read as one (corrupt, truncated, another format, a crafted header)."""


def safetensors_header(path: str | Path, what: str = "") -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor shapes and metadata of a safetensors file, from its header alone (nothing is allocated)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "not a file we can read"
        raise UnreadableWeightsError(_unreadable(path, what, e)) from None


def read_safetensors(path: str | Path, what: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and metadata of a safetensors file, or an `UnreadableWeightsError` naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - as above
        raise UnreadableWeightsError(_unreadable(path, what, e)) from None


def _unreadable(path: str | Path, what: str, err: Exception) -> str:
    return f"{path}: not a readable safetensors file{' (' + what + ')' if what else ''}: {str(err)[:200] or type(err).__name__}"
