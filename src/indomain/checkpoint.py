"""Training checkpoints that load without running code.

A checkpoint folder is input like any other: someone may hand you one. So nothing in it is a pickle
that could execute code on load. ``checkpoint-N/`` holds exactly these files:

- ``model/``: the weights as a `save_pretrained` folder (safetensors), so a checkpoint loads by hand, e.g.
  ``NullTextUNet.from_pretrained("run/checkpoint-500/model")``; for a full fine-tune it is also what resume reads;
- ``model.safetensors``: for LoRA runs only, the trainable (adapter) weights by parameter name;
- ``ema.safetensors``: the EMA weights by the same names, its counters in the metadata (when EMA is on);
- ``optimizer.pt``: optimizer, LR-schedule and loss-scaler state: plain tensors, numbers and lists,
  read back with ``torch.load(weights_only=True)``, which refuses anything else;
- ``rng.safetensors``: the torch random-number states;
- ``train_state.json``: the step and the run's configuration (the prior it was made with included);
- ``accelerate/``: only where accelerate's config shards training (DeepSpeed ZeRO, FSDP): what
  ``accelerator.save_state`` wrote (model and optimizer as the plugin lays them out, LR schedule), in place of
  ``optimizer.pt``; resume loads it with ``accelerator.load_state``. Its weights are safetensors where the plugin
  allows; its torch archives (``optimizer.bin``, ``scheduler.bin``, DeepSpeed's ``*_states.pt``) are each read
  first with ``torch.load(weights_only=True)``, and a file that fails that (a pickle with code in it, FSDP's
  ``.distcp``/``.metadata`` files) is refused unless the run passes ``--allow-pickle``. accelerate's
  ``random_states_N.pkl`` (numpy pickles) are dropped: the run's randomness is in ``rng.safetensors`` and the
  per-sample generators.

`read_checkpoint` refuses any other file, and any file that fails to load, with an error naming it.
Written into a hidden temporary folder and renamed (`indomain.outputs.atomic_path`), so a kill mid-save never leaves a half checkpoint.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .numerics import all_finite
from .outputs import atomic_path, to_json

FILES = {"model.safetensors", "ema.safetensors", "optimizer.pt", "rng.safetensors", "train_state.json", "model",
         "accelerate"}
REQUIRED = {"model", "train_state.json"}  # and optimizer.pt, or accelerate/ (DeepSpeed / FSDP)
MODEL_FILES = ("*.safetensors", "*.json")  # all that model/ may hold (configs, adapter config, weights)


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete, holds an unexpected file, or a file that cannot be loaded safely."""


@dataclass
class Checkpoint:
    """Everything `read_checkpoint` loaded, checked, before any of it touches the model."""

    path: Path
    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: tuple[dict[str, torch.Tensor], dict[str, Any]] | None
    optimizer: dict[str, Any] | None
    rng: dict[str, torch.Tensor]
    accelerate: Path | None = None  # accelerator.save_state's folder (DeepSpeed / FSDP runs), checked


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints (``checkpoint-N``), oldest first; ``.tmp`` and ``.diverged`` folders are skipped."""
    found = [p for p in Path(output).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint must hold to restore ``model`` exactly: those being trained."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def write_checkpoint(folder: Path, step: int, config: dict[str, Any], model: torch.nn.Module, optimizer: Any,
                     lr_scheduler: Any, ema: Any | None, scaler: Any | None, save_model: Any,
                     accelerate_state: Path | None = None) -> Path:
    """Write ``folder`` (``.../checkpoint-N``) atomically; ``save_model(model, dir)`` writes the hand-loadable copy.

    ``accelerate_state``: a folder ``accelerator.save_state`` wrote (DeepSpeed / FSDP), moved in as ``accelerate/``;
    then it holds the optimizer and schedule, and ``optimizer`` is None.
    """
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        if accelerate_state is not None:
            for pkl in Path(accelerate_state).glob("random_states_*.pkl"):
                pkl.unlink()  # numpy pickles; the run's RNG is in rng.safetensors
            Path(accelerate_state).replace(tmp / "accelerate")
        state = trainable_state(model)
        if any(not p.requires_grad for p in model.parameters()):  # LoRA: model/ holds adapters under other names
            save_file(state, tmp / "model.safetensors")
        if ema is not None:
            names = list(state)
            counters = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
            save_file({n: s.detach().cpu().contiguous() for n, s in zip(names, ema.shadow_params)}, tmp / "ema.safetensors",
                      metadata={"counters": to_json(counters)})
        if optimizer is not None:
            torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                        "scaler": None if scaler is None else scaler.state_dict()}, tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, tmp / "rng.safetensors")
        save_model(model, tmp / "model")
        (tmp / "train_state.json").write_text(to_json({"global_step": step, "config": config}, indent=2))
    return folder


def _safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        return load_file(path), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); this checkpoint cannot be resumed") from None


def _check_accelerate_state(folder: Path, allow_pickle: bool) -> None:
    """Every file of ``accelerate/``: safetensors with a readable header, or a torch archive that loads with
    ``weights_only=True``; anything else only with ``allow_pickle``."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        if file.is_symlink():
            raise CheckpointError(f"{file}: a link inside a checkpoint; refusing to resume from {folder.parent}")
        if file.suffix == ".safetensors":
            _safetensors(file)
            continue
        if file.suffix == ".json":
            try:
                json.loads(file.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{file}: not valid JSON ({e}); this checkpoint cannot be resumed") from None
            continue
        try:
            torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - not plain tensors and numbers
            if not allow_pickle:
                raise CheckpointError(
                    f"{file}: refused: it does not load as plain tensors and numbers ({type(e).__name__}), so loading "
                    "it could run code. Resume with --allow-pickle only if you trust this checkpoint") from None


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """Load and check every file of a checkpoint folder, without executing anything stored in it.

    ``allow_pickle`` lets the files of a DeepSpeed / FSDP ``accelerate/`` folder that are not plain tensors through
    (they are then loaded by accelerate and the plugin, with their own loaders)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a folder")
    names = {p.name for p in path.iterdir()}
    if "random_states_0.pkl" in names or "optimizer.bin" in names:
        raise CheckpointError(
            f"{path} is an old-format checkpoint (accelerate pickle files such as random_states_0.pkl), which can run "
            "code when loaded; indomain no longer resumes from it. Start the run again, or resume from a newer checkpoint"
        )
    unexpected = sorted(names - FILES)
    if unexpected:
        raise CheckpointError(f"{path / unexpected[0]}: unexpected file in a checkpoint; refusing to resume from {path}")
    missing = sorted(REQUIRED - names) + ([] if names & {"optimizer.pt", "accelerate"} else ["optimizer.pt"])
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: {', '.join(missing)} is missing")
    try:
        state = json.loads((path / "train_state.json").read_text())
        step, config = int(state["global_step"]), dict(state["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / 'train_state.json'}: not a valid training state ({e})") from None
    model_dir = path / "model"
    odd = sorted(p for p in model_dir.iterdir() if not any(fnmatch.fnmatch(p.name, g) for g in MODEL_FILES))
    if odd:
        raise CheckpointError(f"{odd[0]}: unexpected file in a checkpoint; refusing to resume from {path}")
    for file in model_dir.glob("*.json"):
        try:
            json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{file}: not valid JSON ({e}); this checkpoint cannot be resumed") from None
    model: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):  # every file is checked, even where LoRA reads model.safetensors
        model.update(_safetensors(file)[0])
    if (path / "model.safetensors").exists():
        model = _safetensors(path / "model.safetensors")[0]
    ema = None
    if (path / "ema.safetensors").exists():
        shadow, meta = _safetensors(path / "ema.safetensors")
        try:
            counters = json.loads(meta.get("counters", "{}"))
        except ValueError as e:
            raise CheckpointError(f"{path / 'ema.safetensors'}: bad EMA counters in its metadata ({e})") from None
        ema = (shadow, counters)
    optimizer = None
    if (path / "optimizer.pt").exists():
        try:
            optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError: all mean "not safe or not whole"
            raise CheckpointError(
                f"{path / 'optimizer.pt'}: refused: it does not load as plain tensors and numbers "
                f"({type(e).__name__}); it may be corrupt or crafted to run code. Resume from another checkpoint"
            ) from None
        if not isinstance(optimizer, dict) or not {"optimizer", "lr_scheduler"} <= set(optimizer):
            raise CheckpointError(f"{path / 'optimizer.pt'}: not an indomain optimizer state")
    accelerate = None
    if (path / "accelerate").is_dir():
        _check_accelerate_state(path / "accelerate", allow_pickle)
        accelerate = path / "accelerate"
    rng = _safetensors(path / "rng.safetensors")[0] if (path / "rng.safetensors").exists() else {}
    return Checkpoint(path=path, step=step, config=config, model=model, ema=ema, optimizer=optimizer, rng=rng,
                      accelerate=accelerate)


def check_fits(ckpt: Checkpoint, model: torch.nn.Module, prior: str) -> None:
    """Refuse a checkpoint whose weights do not fit ``model``, naming the prior it was made with."""
    own = trainable_state(model)
    made_with = ckpt.config.get("prior", "an unknown prior")

    def refuse(detail: str) -> None:
        raise CheckpointError(
            f"checkpoint {ckpt.path} was made with prior {made_with!r} and does not fit this run's model "
            f"(prior {prior!r}): {detail}. Resume with the prior and settings it was made with"
        )

    missing = sorted(set(own) - set(ckpt.model))
    if missing:
        refuse(f"{len(missing)} of this model's trained weights are not in the checkpoint (e.g. {missing[0]})")
    for name, value in own.items():
        if ckpt.model[name].shape != value.shape:
            refuse(f"{name} has shape {tuple(ckpt.model[name].shape)} in the checkpoint, {tuple(value.shape)} here")
    if ckpt.ema is not None and set(ckpt.ema[0]) != set(own):
        refuse("its EMA weights do not match its model weights")


def restore(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, lr_scheduler: Any, ema: Any | None,
            scaler: Any | None, weights: bool = True) -> None:
    """Put a checked checkpoint into the (unwrapped) model, optimizer, schedule, EMA, scaler and RNG.

    ``weights=False`` with ``optimizer=None``: only EMA and RNG (``accelerator.load_state`` restored the rest)."""
    params = dict(model.named_parameters())
    if weights:
        with torch.no_grad():
            for name, p in params.items():
                if p.requires_grad:
                    p.copy_(ckpt.model[name])
    if optimizer is not None:
        if ckpt.optimizer is None:
            raise CheckpointError(f"checkpoint {ckpt.path} was written under DeepSpeed / FSDP (accelerate/, no "
                                  "optimizer.pt); resume it with the same accelerate config")
        optimizer.load_state_dict(ckpt.optimizer["optimizer"])
        lr_scheduler.load_state_dict(ckpt.optimizer["lr_scheduler"])
        if scaler is not None and ckpt.optimizer.get("scaler") is not None:
            scaler.load_state_dict(ckpt.optimizer["scaler"])
    if ema is not None:
        if ckpt.ema is None:
            raise CheckpointError(f"checkpoint {ckpt.path} has no EMA weights but this run uses EMA (pass --no-ema)")
        shadow, counters = ckpt.ema
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        ema.load_state_dict({**counters, "shadow_params": [shadow[n] for n in names]})
    if "torch" in ckpt.rng:
        torch.set_rng_state(ckpt.rng["torch"])
    if torch.cuda.is_available():
        states = [ckpt.rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in ckpt.rng]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def weights_are_finite(params: list[torch.Tensor]) -> bool:
    """Every weight is finite (`indomain.numerics.all_finite`)."""
    return all_finite(params)
