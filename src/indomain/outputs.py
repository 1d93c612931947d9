"""Writing results: PNGs, an image grid, and a JSON record of every setting next to them."""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Sequence
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
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_record(path: str | Path, settings: dict[str, Any], **extra: Any) -> Path:
    """Write ``{"settings": ..., "environment": ..., **extra}`` as pretty JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(sys.argv), "settings": settings, "environment": environment(), **extra}
    path.write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    return path
