"""Tests for indomain.evaluate: offline, tiny (32 px prior, 2 sampler steps, 2-8 images), seconds each.

FID/KID use a seeded random conv net as the feature space (``resolution=32``); CLIP score a tiny random CLIP built
from config. Nothing touches a model hub.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indomain import cli
from indomain import evaluate as E
from indomain.metrics import ImageFolderError, MissingWeightsError, RandomConvFeatures, clip_score
from indomain.nulltext import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.testing import save_tiny_clip, save_tiny_prior, tiny_unet

PROMPTS = ["a cat", "a dog wearing glasses"]




@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread while inside, then the previous count. These models are tiny, and on a shared 2-core
    machine two spinning OpenMP threads made every step up to 30x slower whenever the other core was busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Tiny prior, a calibrated null-text domain model, a 'fine-tuned' UNet, a real folder of mixed sizes, CLIP."""
    with one_thread():
        yield _build_world(tmp_path_factory.mktemp("eval-world"))


def _build_world(root: Path) -> dict[str, Path]:
    prior = save_tiny_prior(root / "prior")
    pipe = InDomainPipeline.from_pretrained(prior)
    null = pipe.encode_text([""], torch.device("cpu"))
    NullTextUNet.from_prior(pipe.unet, null, prior=str(prior)).save_pretrained(root / "domain")
    tiny_unet(seed=1).save_pretrained(root / "finetune")
    real = root / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(32, 32), (40, 36), (24, 24), (64, 48), (32, 32)]):  # sizes differ on purpose
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(real / f"{i}.png")
    return {"prior": prior, "domain": root / "domain", "finetune": root / "finetune", "real": real,
            "clip": save_tiny_clip(root / "clip")}


def config(out: Path, **kw) -> E.EvalConfig:
    base = dict(out=out, num_images=4, prompts=PROMPTS, steps=2, batch_size=4, kid_subset_size=4, kid_subsets=10,
                resolution=32, use_stats_cache=False)
    base.update(kw)
    return E.EvalConfig(**base)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def assert_same_image(a: Path, b: Path) -> None:
    """Equal up to batch round-off. Batched kernels sum in another order than single-image ones: float round-off
    (~1e-6) may flip a rare 8-bit value by 1, nothing more. (Sharding keeps the batches: there the bytes match.)"""
    x, y = (np.asarray(Image.open(p), dtype=np.int16) for p in (a, b))
    assert np.abs(x - y).max() <= 1 and (x != y).mean() < 0.01, (a.name, b.name)


def red_score(images: list[Image.Image], prompts: list[str | None]) -> dict[str, float]:
    """A stand-in controllability scorer: mean red fraction, and how many prompts mention glasses."""
    reds = [np.asarray(im, dtype=np.float64)[..., 0].mean() / 255 for im in images]
    return {"redness": float(np.mean(reds)), "glasses_prompts": float(sum("glasses" in (p or "") for p in prompts))}


# --------------------------------------------------------------------------------------------- sweep + outputs


def test_sweep_writes_tables_plot_and_report(world, tmp_path):
    ours = E.Method("ours", world["prior"], domain=world["domain"])
    finetune = E.Method("finetune", world["prior"], unet=world["finetune"])
    result = E.evaluate([ours, finetune], E.Sweep([0, 2.5], [0, 2.5]), config(tmp_path / "ev", real=world["real"]),
                        extractor=RandomConvFeatures(0), scorer=red_score)
    out = tmp_path / "ev"
    # a row per (method, w_d, w_c); the fine-tune has no domain term, so its w_d is 0
    keys = [(r["method"], r["w_d"], r["w_c"]) for r in result.rows]
    assert keys == [("ours", 0, 0), ("ours", 0, 2.5), ("ours", 2.5, 0), ("ours", 2.5, 2.5),
                    ("finetune", 0, 0), ("finetune", 0, 2.5)]
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["method"], float(r["w_d"]), float(r["w_c"])) for r in table] == keys
    assert {"fid", "kid", "kid_std", "redness", "glasses_prompts"} <= set(table[0])
    assert all(np.isfinite(float(r["fid"])) for r in table)
    assert float(table[0]["glasses_prompts"]) == 2  # the scorer saw the generation prompts, cycled over 4 images

    data = json.loads((out / "results.json").read_text())
    fid = data["metrics"]["ours_wd2.5_wc2.5"]["fid"]
    assert fid["library"] == "torchmetrics" and fid["resolution"] == 32 and fid["n_real"] == 5
    assert fid["n_generated"] == 4 and "center-cropped" in fid["preprocess"] and fid["extractor"].startswith("random-conv:0")
    assert (out / "results.md").read_text().count("\n| ours") == 4
    assert len(pngs(out / "images")) == 6 * 4 and len(list((out / "grids").glob("*.png"))) == 6
    with Image.open(out / "plot.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 1 + 6  # plot + one grid per setting: self-contained
    assert "finetune_wd0_wc2.5" in report and "Command" in report and "torchmetrics" in report
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["sweep"] == {"domain_guidance_scales": [0, 2.5], "guidance_scales": [0, 2.5]}
    assert settings["methods"][1]["unet"] == str(world["finetune"]) and settings["num_processes"] == 1


def test_image_depends_only_on_its_seed(world, tmp_path):
    ours = E.Method("ours", world["prior"], domain=world["domain"])
    sweep = E.Sweep([2.5], [2.5])
    batched = E.evaluate(ours, sweep, config(tmp_path / "b4", batch_size=4))
    alone = E.evaluate(ours, sweep, config(tmp_path / "b1", batch_size=1))
    first, single = tmp_path / "b4/images/ours_wd2.5_wc2.5", tmp_path / "b1/images/ours_wd2.5_wc2.5"
    for i in range(4):
        assert_same_image(first / f"{i:06d}.png", single / f"{i:06d}.png")
    # starting two seeds later reproduces images 2 and 3 (same prompts: i mod 2 is unchanged)
    E.evaluate(ours, sweep, config(tmp_path / "s2", num_images=2, seed=2, batch_size=2))
    shifted = tmp_path / "s2/images/ours_wd2.5_wc2.5"
    assert_same_image(shifted / "000000.png", first / "000002.png")
    assert_same_image(shifted / "000001.png", first / "000003.png")
    with pytest.raises(AssertionError):  # while different seeds give different images
        assert_same_image(first / "000000.png", first / "000002.png")
    # without metrics the tables are still written, and there is no fidelity axis to plot
    assert batched.rows[0].keys() == alone.rows[0].keys() == {"method", "w_d", "w_c", "setting", "n_generated", "images"}
    assert not (tmp_path / "b4" / "plot.png").exists() and "no plot" in (tmp_path / "b4" / "report.html").read_text()


def test_shard_batches_are_disjoint_and_the_same_batches():
    one = E.shard_batches(10, 4)
    two = [E.shard_batches(10, 4, r, 2) for r in range(2)]
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert two == [[[0, 1, 2, 3], [8, 9]], [[4, 5, 6, 7]]]
    assert E.shard_batches(2, 4, 1, 2) == []


def test_two_process_launch_matches_one_process(world, tmp_path):
    """A real 2-process gloo run through accelerate's launcher gives the same PNG bytes and metrics."""
    args = ["evaluate", "--prior", str(world["prior"]), "--domain", str(world["domain"]), "--prompts", *PROMPTS,
            "--num-images", "4", "--batch-size", "2", "--steps", "2", "--domain-scales", "2.5", "--guidance-scales", "2.5",
            "--real", str(world["real"]), "--extractor", "random-conv:0", "--resolution", "32", "--kid-subset-size", "4",
            "--kid-subsets", "10", "--stats-cache", str(tmp_path / "cache")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "indomain.cli", *args, "--out", str(tmp_path / "two")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0

    two, one = pngs(tmp_path / "two" / "images"), pngs(tmp_path / "one" / "images")
    assert len(one) == 4 and two == one
    rows = [json.loads((tmp_path / d / "results.json").read_text())["rows"][0] for d in ("two", "one")]
    assert rows[0]["fid"] == rows[1]["fid"] and rows[0]["kid"] == rows[1]["kid"]
    assert json.loads((tmp_path / "two" / "settings.json").read_text())["settings"]["num_processes"] == 2


def test_clip_score_scores_the_clip_text(world, tmp_path):
    ours = E.Method("ours", world["prior"], domain=world["domain"])
    cfg = config(tmp_path / "clip", num_images=2, batch_size=2, prompts=["a red face wearing a hat"], clip_texts=["hat"],
                 clip_model=world["clip"])
    (row,) = E.evaluate(ours, E.Sweep([2.5], [2.5]), cfg, scorer=red_score).rows
    files = sorted((tmp_path / "clip" / "images" / row["setting"]).glob("*.png"))
    expected = clip_score([Image.open(f).convert("RGB") for f in files], ["hat"] * 2, world["clip"])
    assert row["clip_score"] > 0  # this random CLIP gives "hat" a positive score, so the check is not 0 == 0
    assert row["clip_score"] == pytest.approx(expected.value, abs=1e-4)
    # the scored text is the CLIP text, not the generation prompt
    assert row["clip_score"] != pytest.approx(clip_score(files[0].parent, "a red face wearing a hat", world["clip"]).value)
    assert (tmp_path / "clip" / "plot.png").is_file()  # x = clip_score, y = the scorer's first column


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_generation_with_clear_errors(world, tmp_path, capsys):
    base = ["evaluate", "--prior", str(world["prior"]), "--steps", "2", "--num-images", "4", "--real", str(world["real"])]
    missing = tmp_path / "nope" / "weights-inception-2015-12-05-6726825d.pth"
    assert cli.main([*base, "--inception-weights", str(missing), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--inception-weights" in err
    assert cli.main([*base, "--out", str(tmp_path / "o2")]) == 2
    assert "--inception-weights" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()

    prior = E.Method("prior", world["prior"])
    sweep, conv = E.Sweep(), RandomConvFeatures(0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="holds no image"):
        E.evaluate(prior, sweep, config(tmp_path / "o3", real=tmp_path / "empty"), extractor=conv)
    with pytest.raises(ImageFolderError, match="does not exist"):
        E.evaluate(prior, sweep, config(tmp_path / "o3", real=tmp_path / "missing"), extractor=conv)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(ImageFolderError, match="a.png"):  # real statistics come first: no sampling wasted
        E.evaluate(prior, sweep, config(tmp_path / "o3", real=broken, metrics=("fid",)), extractor=conv)
    with pytest.raises(ValueError, match=r"subset_size=1000.*5 real, 4 generated.*--kid-subset-size"):
        E.evaluate(prior, sweep, config(tmp_path / "o3", real=world["real"], kid_subset_size=1000), extractor=conv)
    with pytest.raises(MissingWeightsError, match="--inception-weights"):
        E.evaluate(prior, sweep, config(tmp_path / "o3", real=world["real"]))
    with pytest.raises(ValueError, match="3 clip texts for 2 prompts"):
        E.evaluate(prior, sweep, config(tmp_path / "o3", clip_texts=["a", "b", "c"]))
    with pytest.raises(MissingWeightsError, match="--clip-model"):
        E.evaluate(prior, sweep, config(tmp_path / "o3", clip_model=tmp_path / "no-clip"))
    with pytest.raises(ValueError, match="distinct names"):
        E.evaluate([prior, prior], sweep, config(tmp_path / "o3"))
    assert not (tmp_path / "o3" / "images").exists()


def test_cli_help_and_method_parsing(tmp_path, capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["evaluate"]
    for action in sub._actions:
        assert action.help, action.dest
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--out", "x", "--extractor", "inception"])
    assert "random-conv:SEED" in capsys.readouterr().err

    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps([
        {"name": "ours", "domain": "dom"},
        {"name": "rectified", "domain": "ft", "domain_prompt": "a photo of <domain>", "guidance_scales": [0]},
    ]))
    args = parser.parse_args(["evaluate", "--prior", "sd", "--methods", str(methods), "--out", "x"])
    ours, rect = E.methods_from_args(args)
    assert ours.prior == rect.prior == "sd" and rect.domain_prompt == "a photo of <domain>"
    assert E.Sweep([1, 2], [0, 5]).weights(rect, conditional=True) == [(1, 0), (2, 0)]
    assert E.Sweep([1, 2], [0, 5]).weights(E.Method("p", "sd"), conditional=False) == [(0, 0)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    assert E.read_lines(prompts) == ["a cat", "a dog"]
