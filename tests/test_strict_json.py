"""Every JSON file the commands write, and every ``--json`` output, is strict JSON (no NaN / Infinity).

Python's ``json.loads`` accepts ``NaN``, ``Infinity`` and ``-Infinity``; strict parsers (browsers, jq, Go, Rust)
reject them. ``parse_constant`` is called for exactly those three words, so raising there is ``allow_nan=False``
on the reading side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indomain.cli import main
from indomain.outputs import _jsonable, to_json
from indomain.testing import save_tiny_prior


def strict_loads(text: str):
    def refuse(word: str):
        raise ValueError(f"non-standard JSON constant {word}")

    return json.loads(text, parse_constant=refuse)


def check_folder(folder: Path) -> list[str]:
    """Parse every .json / .jsonl file below ``folder`` strictly; return their names (relative)."""
    seen = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            strict_loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    strict_loads(line)
        else:
            continue
        seen.append(str(path.relative_to(folder)))
    return seen


def test_strict_loads_refuses_what_python_accepts():
    for word in ("NaN", "Infinity", "-Infinity"):
        assert json.loads(f"[{word}]")  # Python's default reader takes them...
        with pytest.raises(ValueError, match="non-standard"):
            strict_loads(f"[{word}]")  # ...a strict one does not


def test_to_json_writes_null_for_nan_and_strings_for_infinities():
    value = {"a": -math.inf, "b": math.inf, "c": math.nan, "d": np.float32(1.5), "e": torch.tensor(2), "f": (1, 2),
             "g": np.arange(2)}
    assert strict_loads(to_json(value)) == {"a": "-Infinity", "b": "Infinity", "c": None, "d": 1.5, "e": 2,
                                            "f": [1, 2], "g": [0, 1]}
    assert _jsonable(True) is True and _jsonable("x") == "x"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    prior = save_tiny_prior(root / "prior")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    return prior, images


def test_every_command_writes_strict_json(world, tmp_path, capfd):
    prior, images = world
    # train: train_config.json, skipped.json, train_log.jsonl, checkpoints, model configs
    run = tmp_path / "run"
    assert main(["train", "--prior", str(prior), "--images", str(images), "--output", str(run), "--resolution", "32",
                 "--train-batch-size", "2", "--max-train-steps", "2", "--checkpointing-steps", "1",
                 "--validation-steps", "2", "--validation-prompts", "a cat", "--num-validation-images", "1",
                 "--validation-inference-steps", "1", "-q"]) == 0
    capfd.readouterr()
    assert {"train_config.json", "skipped.json", "train_log.jsonl", "config.json"} <= set(check_folder(run))

    # generate with the default sampler (DPM-Solver++: its config holds lambda_min_clipped = -inf)
    gen = tmp_path / "gen"
    assert main(["generate", "--prior", str(prior), "--domain", str(run), "--num-images", "1", "--steps", "2",
                 "--out", str(gen), "--json"]) == 0
    printed = strict_loads(capfd.readouterr().out)
    assert printed["resolved"]["scheduler"]["lambda_min_clipped"] == "-Infinity"
    assert "settings.json" in check_folder(gen)

    edit = tmp_path / "edit"
    assert main(["edit", "--prior", str(prior), "--domain", str(run), "--image", str(images / "0.png"), "--steps", "2",
                 "--out", str(edit), "--json"]) == 0
    strict_loads(capfd.readouterr().out)
    assert "settings.json" in check_folder(edit)

    ev = tmp_path / "ev"
    assert main(["evaluate", "--prior", str(prior), "--num-images", "2", "--batch-size", "2", "--steps", "2",
                 "--guidance-scales", "0", "--out", str(ev), "--json"]) == 0
    strict_loads(capfd.readouterr().out)
    assert {"results.json", "settings.json"} <= set(check_folder(ev))

    d3 = tmp_path / "3d"
    assert main(["3d", "--prior", str(prior), "--prompt", "red apple", "--out", str(d3), "--steps", "2",
                 "--grid-resolution", "8", "--num-samples", "8", "--turntable-frames", "2", "-q"]) == 0
    capfd.readouterr()
    assert {"settings.json", "log.jsonl"} <= set(check_folder(d3))
    assert main(["3d", "--prior", "p", "--prompt", "owl", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    strict_loads(capfd.readouterr().out)


def test_the_emoji_world_renderer_writes_strict_json(tmp_path):
    from indomain.world import render as R

    R.render_dataset(tmp_path / "ds", styles=R.STYLES, size=32, limit=2, progress=False)
    written = check_folder(tmp_path / "ds")
    assert "index.json" in written and any(w.endswith("metadata.jsonl") for w in written)
