"""Hostile and careless input: crafted checkpoints, folders that are not ours, divergence, bad numbers.

Each test here failed on the code before issue #8; docs/RELIABILITY.md lists the promises they check.
"""

import json
import os
import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indomain.checkpoint import CheckpointError, read_checkpoint
from indomain.cli import main
from indomain.data import find_images
from indomain.outputs import OutputFolderError
from indomain.testing import save_tiny_prior, tiny_unet
from indomain.train import TrainConfig, list_checkpoints, train


class _Payload:
    """Unpickling this runs code: it creates the file named by SENTINEL."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.makedirs, (str(self.sentinel),))


def craft(path: Path, sentinel: Path) -> None:
    path.write_bytes(pickle.dumps({"state": _Payload(sentinel)}))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    prior = save_tiny_prior(root / "prior")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    return prior, images


def cfg(world, out, **kw):
    prior, images = world
    base = dict(prior=str(prior), images=str(images), output=str(out), resolution=32, train_batch_size=2,
                max_train_steps=2, checkpointing_steps=1, learning_rate=1e-3, ema_decay=0.9)
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    """A full and a LoRA run, each with checkpoint-1 and checkpoint-2."""
    root = tmp_path_factory.mktemp("runs")
    return {"full": train(cfg(world, root / "full")), "lora": train(cfg(world, root / "lora", lora_rank=2))}


def _cli(capsys, *argv):
    """(exit code, stderr) of one in-process command; argparse errors exit through SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# -- 1. a crafted checkpoint never runs code -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_every_checkpoint_file_crafted_as_a_pickle_is_refused_by_name(runs, kind, tmp_path):
    source = runs[kind] / "checkpoint-2"
    files = [p.relative_to(source) for p in source.rglob("*") if p.is_file()]
    assert {"optimizer.pt", "train_state.json", "rng.safetensors", "ema.safetensors"} <= {str(f) for f in files}
    for rel in files:
        ckpt = tmp_path / f"case-{str(rel).replace('/', '_')}" / "checkpoint-2"
        shutil.copytree(source, ckpt)
        sentinel = tmp_path / f"pwned-{rel.name}"
        craft(ckpt / rel, sentinel)
        with pytest.raises(CheckpointError, match=str(rel.name).replace(".", r"\.")):
            read_checkpoint(ckpt)
        assert not sentinel.exists(), f"code ran while reading crafted {rel}"


def test_extra_and_old_format_pickles_are_refused(runs, tmp_path):
    for name, match in [("custom_checkpoint_0.pkl", "unexpected file"), ("random_states_0.pkl", "old-format")]:
        ckpt = tmp_path / name / "checkpoint-2"
        shutil.copytree(runs["full"] / "checkpoint-2", ckpt)
        craft(ckpt / name, tmp_path / "pwned")
        with pytest.raises(CheckpointError, match=match):
            read_checkpoint(ckpt)
    assert not (tmp_path / "pwned").exists()


def test_resume_from_crafted_optimizer_state_is_an_error_line(world, runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    craft(run / "checkpoint-2" / "optimizer.pt", tmp_path / "pwned")
    prior, images = world
    code, err = _cli(capsys, "train", "--prior", prior, "--images", images, "--output", run, "--resolution", 32,
                     "--max-train-steps", 3, "--resume", "latest")
    assert code == 2 and err.startswith("error:") and "optimizer.pt" in err and "Traceback" not in err
    assert "weights_only=False" not in err
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_weights_load_by_hand(runs):
    from indomain import NullTextUNet

    model = NullTextUNet.from_pretrained(runs["full"] / "checkpoint-2" / "model")
    assert sum(p.numel() for p in model.parameters()) > 0


# -- 2. --overwrite never deletes what is not ours ------------------------------------------------------------


def test_overwrite_refuses_images_inside_output_and_keeps_everything(world, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(world[1], out / "images")
    (out / "notes.txt").write_text("my notes")
    code, err = _cli(capsys, "train", "--prior", world[0], "--images", out / "images", "--output", out,
                     "--resolution", 32, "--max-train-steps", 1, "--overwrite")
    assert code == 2 and "overlap" in err
    assert (out / "notes.txt").read_text() == "my notes" and len(list((out / "images").iterdir())) == 4


def test_overwrite_refuses_a_folder_that_is_not_a_run_or_holds_foreign_files(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(OutputFolderError, match=r"not written by `indomain train`.*thesis\.tex"):
        train(cfg(world, out, overwrite=True))
    assert (out / "thesis.tex").exists()
    run = train(cfg(world, tmp_path / "run", max_train_steps=1))
    (run / "notes.txt").write_text("x")
    with pytest.raises(OutputFolderError, match=r"did not write: notes\.txt"):
        train(cfg(world, run, max_train_steps=1, overwrite=True))
    assert (run / "notes.txt").exists()
    (run / "notes.txt").unlink()
    train(cfg(world, run, max_train_steps=1, overwrite=True))  # a clean run of ours is replaced


def test_output_inside_the_images_is_refused(world, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(world[1], images)
    with pytest.raises(OutputFolderError, match="overlap"):
        train(cfg(world, images / "run", images=str(images)))
    assert not (images / "run").exists()


def test_generate_evaluate_benchmark_and_demo_refuse_foreign_folders(world, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    for argv in (["generate", "--prior", world[0], "--domain-scale", 0, "--out", out, "--overwrite"],
                 ["evaluate", "--prior", world[0], "--num-images", 1, "--out", out, "--overwrite"],
                 ["world", "benchmark", "--prior", world[0], "--out", out, "--no-evaluators", "--overwrite"],
                 ["demo", "--prior", world[0], "--out", out, "--overwrite"]):
        code, err = _cli(capsys, *argv)
        assert code == 2 and "holiday.jpg" in err, (argv[0], err)
    assert (out / "holiday.jpg").exists() and sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_generate_into_its_own_output_needs_overwrite(world, tmp_path, capsys):
    args = ["generate", "--prior", world[0], "--domain-scale", 0, "--num-images", 1, "--steps", 1, "--out", tmp_path / "g"]
    assert _cli(capsys, *args)[0] == 0
    code, err = _cli(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert _cli(capsys, *args, "--overwrite")[0] == 0


# -- 3. divergence: the last good state is good ---------------------------------------------------------------


def test_divergence_names_a_good_state_and_is_one_error_line(world, tmp_path, capsys):
    out = tmp_path / "div"
    code, err = _cli(capsys, "train", "--prior", world[0], "--images", world[1], "--output", out, "--resolution", 32,
                     "--train-batch-size", 2, "--max-train-steps", 4, "--checkpointing-steps", 1, "--learning-rate", 1e6)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: training diverged")
    assert "no checkpoint was saved before step 1" in err and "--learning-rate" in err
    assert list_checkpoints(out) == []  # checkpoint-1 holds the diverged weights: set aside, never resumed
    assert (out / "checkpoint-1.diverged").is_dir()


def test_non_finite_weights_are_never_checkpointed(world, tmp_path, monkeypatch):
    import indomain.checkpoint as checkpoint_mod
    from indomain.train import NonFiniteError

    calls = []

    def poisoned(params):
        calls.append(1)
        return len(calls) < 2  # the weights of step 2 are "not finite"

    monkeypatch.setattr(checkpoint_mod, "weights_are_finite", poisoned)
    with pytest.raises(NonFiniteError, match=r"weights after step 2.*checkpoint-1"):
        train(cfg(world, tmp_path / "w", max_train_steps=3))
    assert [p.name for p in list_checkpoints(tmp_path / "w")] == ["checkpoint-1"]


def test_resume_with_a_lower_learning_rate_uses_it(world, runs, tmp_path, capsys):
    run = tmp_path / "lr"
    shutil.copytree(runs["full"], run)
    train(cfg(world, run, max_train_steps=3, resume=str(run / "checkpoint-1"), learning_rate=1e-5))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and log[-1]["lr"] == pytest.approx(1e-5)
    assert "learning rate 0.001 -> 1e-05" in capsys.readouterr().err


# -- 4 and 5. numbers that would crash later or silently do nothing --------------------------------------------


@pytest.mark.parametrize("flag,value", [("--checkpointing-steps", 0), ("--train-batch-size", 0), ("--learning-rate", "inf"),
                                        ("--gradient-accumulation-steps", 0), ("--max-train-steps", -5),
                                        ("--learning-rate", "nan"), ("--resolution", 0)])
def test_bad_train_numbers_are_refused_before_any_work(world, tmp_path, capsys, flag, value):
    out = tmp_path / "o"
    code, err = _cli(capsys, "train", "--prior", world[0], "--images", world[1], "--output", out, flag, value)
    assert code == 2 and flag in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("flag,value", [("--steps", 0), ("--steps", -1), ("--num-images", 0), ("--num-images", -1)])
def test_bad_generate_numbers_are_refused(world, tmp_path, capsys, flag, value):
    code, err = _cli(capsys, "generate", "--prior", world[0], "--out", tmp_path / "g", flag, value)
    assert code == 2 and flag in err
    assert not (tmp_path / "g").exists()


def test_train_config_validation_covers_the_python_api(world, tmp_path):
    for kw in [dict(gradient_accumulation_steps=0), dict(max_train_steps=-5), dict(learning_rate=float("inf")),
               dict(checkpointing_steps=0), dict(train_batch_size=0)]:
        with pytest.raises(ValueError, match="must be"):
            train(cfg(world, tmp_path / "api", **kw))
    assert not (tmp_path / "api").exists()


def test_resume_latest_without_checkpoint_says_so(world, tmp_path, capsys):
    train(cfg(world, tmp_path / "fresh", max_train_steps=1, resume="latest"))
    assert "no checkpoint in" in capsys.readouterr().err


def test_missing_prior_writes_nothing_and_the_rerun_works(world, tmp_path, capsys):
    out = tmp_path / "o"
    code, err = _cli(capsys, "train", "--prior", "/does/not/exist", "--images", world[1], "--output", out)
    assert code == 2 and "does not exist" in err and not out.exists()
    code, err = _cli(capsys, "generate", "--prior", "/does/not/exist", "--out", tmp_path / "g")
    assert code == 2 and "does not exist" in err and not (tmp_path / "g").exists()
    train(cfg(world, out, max_train_steps=1))


def test_prior_without_unet_weights_is_named(world, tmp_path, capsys):
    prior = tmp_path / "prior"
    shutil.copytree(world[0], prior)
    (prior / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = _cli(capsys, "train", "--prior", prior, "--images", world[1], "--output", tmp_path / "o")
    assert code == 2 and "unet/ has no weights file" in err
    code, err = _cli(capsys, "generate", "--prior", prior, "--domain-scale", 0, "--out", tmp_path / "g")
    assert code == 2 and "unet/ has no weights file" in err


def test_resume_with_another_prior_architecture_names_the_checkpoints_prior(world, runs, tmp_path):
    other = tmp_path / "other-prior"
    shutil.copytree(world[0], other)
    shutil.rmtree(other / "unet")
    tiny_unet(block_out_channels=(32, 32)).save_pretrained(other / "unet")
    run = tmp_path / "run"
    shutil.copytree(runs["full"], run)
    with pytest.raises(CheckpointError, match=f"made with prior '{world[0]}'.*shape"):
        train(cfg(world, run, prior=str(other), max_train_steps=3, resume="latest"))


def test_resolution_and_missing_resume_are_checked_before_latents(world, tmp_path):
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        train(cfg(world, tmp_path / "r", resolution=33))
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        train(cfg(world, tmp_path / "m", resume=str(tmp_path / "missing")))
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write: a read-only bind mount as root (chmod is ignored for root), chmod otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    src = tmp_path / "ro-src"
    src.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(folder)], capture_output=True).returncode == 0
    ok = ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("root without mount rights: no way to make a folder read-only here")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_output_is_an_error_line(world, read_only_dir, capsys):
    code, err = _cli(capsys, "train", "--prior", world[0], "--images", world[1], "--output", read_only_dir / "run",
                     "--resolution", 32, "--max-train-steps", 1)
    assert code == 2 and "not writable" in err
    code, err = _cli(capsys, "generate", "--prior", world[0], "--domain-scale", 0, "--out", read_only_dir / "g")
    assert code == 2 and "not writable" in err


def test_allow_pickle_refusal_names_the_file_and_never_advises_unsafe_loading(world, tmp_path, capsys):
    prior = tmp_path / "pickled"
    shutil.copytree(world[0], prior)
    craft(prior / "unet" / "diffusion_pytorch_model.bin", tmp_path / "pwned")
    (prior / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = _cli(capsys, "generate", "--prior", prior, "--allow-pickle", "--domain-scale", 0, "--out", tmp_path / "g")
    assert code == 2 and "diffusion_pytorch_model.bin" in err and "weights_only=False" not in err
    assert not (tmp_path / "pwned").exists()


def test_convert_pickle_and_mixed_folders(world, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(world[0], safety_checker=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "pk", safe_serialization=False)
    assert _cli(capsys, "convert", tmp_path / "pk", tmp_path / "pk-safe")[0] == 0
    StableDiffusionPipeline.from_pretrained(tmp_path / "pk-safe", use_safetensors=True, safety_checker=None,
                                            requires_safety_checker=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(world[0], mixed)
    torch.save({"wrong": torch.zeros(1)}, mixed / "unet" / "diffusion_pytorch_model.bin")
    code, err = _cli(capsys, "convert", mixed, tmp_path / "mixed-safe")
    assert code == 0, err
    a = (mixed / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (tmp_path / "mixed-safe" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == a
    craft(mixed / "vae" / "extra.bin", tmp_path / "pwned")
    code, err = _cli(capsys, "convert", mixed, tmp_path / "mixed-safe2")
    assert code == 2 and "extra.bin" in err and not (tmp_path / "pwned").exists()


# -- 6. smaller -----------------------------------------------------------------------------------------------


def test_dangling_links_and_loops_are_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    images, skipped = find_images(tmp_path)
    reasons = {p.name: r for p, r in skipped}
    assert [p.name for p in images] == ["a.png"]
    assert reasons == {"dangling.png": "dangling symlink", "loop1": "symlink loop", "loop2": "symlink loop"}


def test_skipped_files_are_in_the_run_record(world, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(world[1], images)
    (images / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning):
        out = train(cfg(world, tmp_path / "run", images=str(images), max_train_steps=1))
    skipped = json.loads((out / "skipped.json").read_text())
    assert [Path(s["file"]).name for s in skipped] == ["broken.png"] and "not an image" in skipped[0]["reason"]


def test_log_has_no_duplicate_steps_after_resume(world, runs, tmp_path):
    run = tmp_path / "log"
    shutil.copytree(runs["full"], run)
    shutil.rmtree(run / "checkpoint-2")  # as if killed after step 2 was logged but before its checkpoint
    train(cfg(world, run, max_train_steps=3, resume="latest", log_every=1))
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3


def test_no_tokenizer_folders_left_in_the_temp_dir():
    from indomain.testing import tiny_tokenizer

    before = set(Path(tempfile.gettempdir()).glob("indomain-tok-*"))
    tiny_tokenizer()
    assert set(Path(tempfile.gettempdir()).glob("indomain-tok-*")) == before
