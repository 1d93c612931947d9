"""Lose nothing (issue #22): run records, inputs apart from outputs, one error line, no silent wrong results.

Grouped by the rule each test checks; every case here was seen to fail on the code before issue #22.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from indomain.cli import main
from indomain.outputs import RUN_MARKER, read_run_record
from indomain.testing import save_tiny_prior

GEN = ["--domain-scale", 0, "--num-images", 2, "--steps", 1]
EDIT = ["--domain-scale", 0, "--steps", 4]  # strength 0.6 of 4 steps: 2 run


def _cli(capsys, *argv):
    """(exit code, stderr) of one in-process command; a raw traceback fails the test at once."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _refused(capsys, *argv, says=""):
    code, err = _cli(capsys, *argv)
    assert code == 2 and any(line.startswith("error:") for line in err.splitlines()), err
    assert says in err, err
    return err


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lose-nothing")
    prior = save_tiny_prior(root / "prior")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    return root, prior, images


@pytest.fixture(scope="module")
def domain(world):
    """A full and a LoRA domain model, trained one step."""
    root, prior, images = world
    train = ["train", "--prior", prior, "--images", images, "--resolution", 32, "--train-batch-size", 2,
             "--max-train-steps", 1]
    assert main([str(a) for a in [*train, "--output", root / "domain"]]) == 0
    assert main([str(a) for a in [*train, "--output", root / "lora", "--lora-rank", 2]]) == 0
    return root / "domain", root / "lora"


def _generate_run(world, capsys, out):
    root, prior, _ = world
    assert _cli(capsys, "generate", "--prior", prior, *GEN, "--out", out)[0] == 0
    return out


# -- 1. a run is recognised by its own record alone --------------------------------------------------------------


def test_the_run_record_lists_every_file_the_run_wrote(world, capsys, tmp_path):
    out = _generate_run(world, capsys, tmp_path / "g")
    record = read_run_record(out)
    assert record["command"] == "generate" and record["finished"] is True
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != RUN_MARKER}
    assert set(record["written"]) == on_disk and "grid.png" in on_disk and "settings.json" in on_disk


def test_a_folder_of_user_pngs_with_a_settings_json_is_not_a_run(world, capsys, tmp_path):
    root, prior, images = world
    user = tmp_path / "photos"
    shutil.copytree(images, user)
    (user / "settings.json").write_text("{}")
    before = _snapshot(user)
    for command in (["generate", "--prior", prior, *GEN], ["edit", "--prior", prior, "--image", images / "0.png", *EDIT]):
        _refused(capsys, *command, "--out", user, "--overwrite", says="not written by")
    assert _snapshot(user) == before


def test_a_model_folder_of_another_tool_is_neither_replaced_nor_resumed(world, capsys, tmp_path):
    root, prior, images = world
    other = tmp_path / "model"
    other.mkdir()
    for name, text in [("train_config.json", "{}"), ("README.md", "mine"), ("config.json", "{}"),
                       ("model.safetensors", "x"), (".tmp_draft.txt", "draft")]:
        (other / name).write_text(text)
    before = _snapshot(other)
    train = ["train", "--prior", prior, "--images", images, "--resolution", 32, "--max-train-steps", 1, "--output", other]
    _refused(capsys, *train, "--overwrite", says="not written by `indomain train`")
    _refused(capsys, *train, "--resume", "latest", says="not written by `indomain train`")
    assert _snapshot(other) == before


def test_benchmark_render_and_demo_leave_a_users_files_alone(world, capsys, tmp_path):
    root, prior, _ = world
    for name, argv in [("RESULTS.md", ["world", "benchmark", "--prior", prior, "--no-evaluators"]),
                       ("index.json", ["world", "render", "--limit", 1]),
                       ("RESULTS.md", ["demo", "--prior", prior])]:
        folder = tmp_path / name.replace(".", "_") / argv[0]
        folder.mkdir(parents=True)
        (folder / name).write_text("my own notes")
        _refused(capsys, *argv, "--out", folder, says="not written by")
        assert (folder / name).read_text() == "my own notes" and len(list(folder.iterdir())) == 1


# -- 2. --overwrite removes exactly what the record lists, for the same command ---------------------------------


def test_overwrite_refuses_a_file_the_user_added_to_a_run(world, capsys, tmp_path):
    root, prior, _ = world
    out = _generate_run(world, capsys, tmp_path / "g")
    (out / "my_favourite_edit.png").write_bytes(b"precious")
    _refused(capsys, "generate", "--prior", prior, *GEN, "--out", out, "--overwrite", says="my_favourite_edit.png")
    assert (out / "my_favourite_edit.png").read_bytes() == b"precious"
    (out / "my_favourite_edit.png").unlink()
    assert _cli(capsys, "generate", "--prior", prior, *GEN, "--out", out, "--overwrite")[0] == 0  # a clean run: replaced


def test_overwrite_refuses_a_hand_edited_or_added_file_in_a_train_run(world, domain, capsys, tmp_path):
    root, prior, images = world
    run = tmp_path / "run"
    shutil.copytree(domain[0], run)  # a copy keeps the record and the fingerprints (copytree keeps mtimes)
    train = ["train", "--prior", prior, "--images", images, "--resolution", 32, "--max-train-steps", 1, "--output", run,
             "--overwrite"]
    readme = run / "README.md"
    readme.write_text(readme.read_text() + "\nMy notes on this model.\n")
    _refused(capsys, *train, says="changed since the run wrote them: README.md")
    assert "My notes" in readme.read_text()
    extra = tmp_path / "run2"
    shutil.copytree(domain[0], extra)
    shutil.copy(extra / "diffusion_pytorch_model.safetensors", extra / "my_best.safetensors")
    _refused(capsys, *train[:-3], "--output", extra, "--overwrite", says="my_best.safetensors")
    assert (extra / "my_best.safetensors").is_file()


def test_overwrite_never_crosses_commands(world, capsys, tmp_path):
    root, prior, images = world
    gen = _generate_run(world, capsys, tmp_path / "g")
    before = _snapshot(gen)
    _refused(capsys, "edit", "--prior", prior, "--image", images / "0.png", *EDIT, "--out", gen, "--overwrite",
             says="holds a run of `indomain generate`")
    assert _snapshot(gen) == before
    edited = tmp_path / "e"
    assert _cli(capsys, "edit", "--prior", prior, "--image", images / "0.png", *EDIT, "--out", edited)[0] == 0
    before = _snapshot(edited)
    _refused(capsys, "generate", "--prior", prior, *GEN, "--out", edited, "--overwrite", says="indomain edit")
    assert _snapshot(edited) == before


def test_resume_and_overwrite_together_are_refused(world, capsys, tmp_path):
    root, prior, images = world
    out = tmp_path / "3d"
    small = ["3d", "--prior", prior, "--prompt", "owl", "--grid-resolution", 4, "--num-samples", 4, "--steps", 1,
             "--turntable-frames", 2, "--out", out]
    assert _cli(capsys, *small)[0] == 0
    before = _snapshot(out)
    _refused(capsys, *small, "--resume", "--overwrite", says="cannot be combined")
    assert _snapshot(out) == before
    train = ["train", "--prior", prior, "--images", images, "--resolution", 32, "--max-train-steps", 1,
             "--output", tmp_path / "t", "--resume", "latest", "--overwrite"]
    _refused(capsys, *train, says="cannot be combined")


# -- 3. every path input is resolved and kept apart from the output --------------------------------------------


def test_inputs_inside_the_output_are_refused_before_anything_is_removed(world, capsys, tmp_path):
    root, prior, images = world
    run = _generate_run(world, capsys, tmp_path / "g")
    png = sorted(run.glob("p00_*.png"))[0]
    before = _snapshot(run)
    edit = ["edit", "--prior", prior, *EDIT, "--out", run, "--overwrite"]
    _refused(capsys, *edit, "--image", run, says="overlap")
    _refused(capsys, *edit, "--image", png, says="overlap")
    _refused(capsys, *edit, "--image", images / "0.png", "--mask", png, says="overlap")
    (run.parent / "x").mkdir()
    via_dots = run.parent / "x" / ".." / run.name / png.name  # `..` and links resolve to the same file
    _refused(capsys, *edit, "--image", via_dots, says="overlap")
    assert _snapshot(run) == before


def test_an_output_inside_an_input_is_refused(world, domain, capsys, tmp_path):
    root, prior, images = world
    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    _refused(capsys, "edit", "--prior", prior, "--image", imgs, *EDIT, "--out", imgs / "edited", says="overlap")
    assert not (imgs / "edited").exists()
    dom = tmp_path / "dom"
    shutil.copytree(domain[0], dom)
    for extra in ([], ["--overwrite"]):
        _refused(capsys, "generate", "--prior", prior, "--domain", dom, "--steps", 1, "--num-images", 1,
                 "--out", dom / "samples", *extra, says="overlap")
        _refused(capsys, "evaluate", "--prior", prior, "--domain", dom, "--num-images", 1,
                 "--out", dom / "eval", *extra, says="overlap")
    assert not (dom / "samples").exists() and not (dom / "eval").exists()


def test_the_latent_cache_never_writes_into_the_images_or_over_a_foreign_file(world, capsys, tmp_path):
    root, prior, images = world
    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    train = ["train", "--prior", prior, "--resolution", 32, "--max-train-steps", 1, "--train-batch-size", 2]
    _refused(capsys, *train, "--images", imgs, "--output", tmp_path / "a", "--latent-cache", imgs, says="overlap")
    assert sorted(p.name for p in imgs.iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    cache = tmp_path / "cache"
    cache.mkdir()
    save_file({"x": torch.zeros(1)}, str(cache / "latents-00000.safetensors"))  # someone else's file of that name
    before = _snapshot(cache)
    _refused(capsys, *train, "--images", imgs, "--output", tmp_path / "b", "--latent-cache", cache,
             says="not written by `indomain train`")
    assert _snapshot(cache) == before


def test_tilde_means_home(world, capsys, tmp_path, monkeypatch):
    root, prior, _ = world
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert _cli(capsys, "generate", "--prior", prior, *GEN, "--out=~/samples")[0] == 0
    assert (tmp_path / "home" / "samples" / "grid.png").is_file() and not (tmp_path / "~").exists()


# -- 4. pickle only with --allow-pickle ------------------------------------------------------------------------


def test_a_pickle_lora_is_refused_without_allow_pickle(world, capsys, tmp_path):
    root, prior, _ = world
    lora = tmp_path / "lora"
    lora.mkdir()
    torch.save({"unet.x.lora_A.weight": torch.zeros(1)}, lora / "pytorch_lora_weights.bin")
    for path in (lora, lora / "pytorch_lora_weights.bin"):
        _refused(capsys, "generate", "--prior", prior, *GEN, "--lora", path, "--out", tmp_path / "g", says="pickle")
    assert not (tmp_path / "g").exists()


# -- 5. one error line, never a traceback --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["null_text_buffers.safetensors", "pytorch_lora_weights.safetensors"])
def test_a_damaged_lora_domain_model_file_is_named(world, domain, capsys, tmp_path, name):
    root, prior, _ = world
    lora = tmp_path / "lora"
    shutil.copytree(domain[1], lora)
    (lora / name).write_bytes(b"\xff" * 64)
    _refused(capsys, "generate", "--prior", prior, "--domain", lora, "--steps", 1, "--num-images", 1,
             "--out", tmp_path / "g", says=name)
    assert not (tmp_path / "g").exists()


def test_an_ip_adapter_with_an_oversized_header_is_named(world, capsys, tmp_path):
    root, prior, images = world
    ip = tmp_path / "ip"
    (ip / "image_encoder").mkdir(parents=True)
    (ip / "image_encoder" / "config.json").write_text("{}")
    (ip / "ip.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    _refused(capsys, "generate", "--prior", prior, *GEN, "--ip-adapter", ip / "ip.safetensors", "--ip-image",
             images / "0.png", "--out", tmp_path / "g", says="ip.safetensors")


@pytest.fixture(scope="module")
def run3d(world):
    root, prior, _ = world
    out = root / "run3d"
    argv = ["3d", "--prior", prior, "--prompt", "owl", "--grid-resolution", 4, "--num-samples", 4, "--steps", 2,
            "--save-every", 1, "--turntable-frames", 2, "--out", out]
    assert main([str(a) for a in argv]) == 0
    return out, argv


def _damaged_3d(run3d, tmp_path, damage):
    out, argv = run3d
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    damage(copy)
    return [*argv[:-1], copy, "--steps", 3, "--resume"]


def _crafted_field(resolution: int):
    def damage(d):
        save_file({"density": torch.zeros(1, 1, 4, 4, 4), "color": torch.zeros(1, 3, 4, 4, 4)},
                  str(d / "field.safetensors"),
                  metadata={"field_config": json.dumps({"resolution": resolution}), "step": "2"})
    return damage


@pytest.mark.parametrize("damage, says", [
    (lambda d: (d / "field.safetensors").write_bytes(pickle.dumps({"a": 1})), "field.safetensors"),
    (lambda d: (d / "optimizer.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{garbage"), "optimizer.safetensors"),
    (lambda d: ((d / "field.safetensors").unlink(), (d / "field.safetensors").symlink_to("/etc/passwd")), "field.safetensors"),
    (lambda d: (d / "settings.json").write_text("{}"), "settings"),
    (lambda d: (d / "settings.json").write_text("[]"), "settings.json"),
    (_crafted_field(100_000), "resolution"),
    (_crafted_field(5), "do not match"),
    (lambda d: save_file({"density.exp_avg": torch.zeros(3)}, str(d / "optimizer.safetensors"), metadata={"step": "2"}),
     "optimizer.safetensors"),
], ids=["pickle-field", "bad-header", "symlink", "settings-empty", "settings-list", "huge-resolution", "shapes",
        "optimizer-shapes"])
def test_a_damaged_3d_state_is_named_on_resume(run3d, capsys, tmp_path, damage, says):
    argv = _damaged_3d(run3d, tmp_path, damage)
    _refused(capsys, *argv, says=says)


def test_a_log_line_without_a_step_does_not_stop_a_resume(run3d, capsys, tmp_path):
    argv = _damaged_3d(run3d, tmp_path, lambda d: open(d / "log.jsonl", "a").write('{"loss": 1}\n{"step": '))
    assert _cli(capsys, *argv)[0] == 0


def test_a_garbage_latent_cache_is_named(world, capsys, tmp_path):
    root, prior, images = world
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "latents-00000.safetensors").write_bytes(b"\xff" * 100)
    _refused(capsys, "train", "--prior", prior, "--images", images, "--resolution", 32, "--max-train-steps", 1,
             "--output", tmp_path / "t", "--latent-cache", cache, says="latents-00000.safetensors")


@pytest.mark.parametrize("device", ["bogus", "cuda", "cuda:7"])
def test_a_device_that_is_not_there_is_one_line(world, capsys, tmp_path, device):
    if torch.cuda.is_available() and device != "bogus":
        pytest.skip("this machine has CUDA")
    root, prior, _ = world
    _refused(capsys, "generate", "--prior", prior, *GEN, "--device", device, "--out", tmp_path / "g", says="--device")
    _refused(capsys, "3d", "--prior", prior, "--prompt", "owl", "--device", device, "--out", tmp_path / "d",
             says="--device")
    assert not (tmp_path / "g").exists() and not (tmp_path / "d").exists()


def test_a_view_template_with_unknown_fields_is_one_line(world, capsys, tmp_path):
    root, prior, _ = world
    for template in ("{nope}", "{"):
        _refused(capsys, "3d", "--prior", prior, "--prompt", "owl", "--view-template", template, "--out",
                 tmp_path / "d", says="--view-template")
    assert not (tmp_path / "d").exists()


def test_json_files_that_are_lists_are_named(world, domain, capsys, tmp_path):
    root, prior, _ = world
    dom = tmp_path / "dom"
    shutil.copytree(domain[0], dom)
    (dom / "config.json").write_text("[]")
    _refused(capsys, "generate", "--prior", prior, "--domain", dom, "--steps", 1, "--out", tmp_path / "g",
             says="config.json")
    rendered = tmp_path / "render"
    assert _cli(capsys, "world", "render", "--limit", 1, "--styles", "noto", "--out", rendered)[0] == 0
    (rendered / "index.json").write_text("[]")
    _refused(capsys, "world", "render", "--limit", 1, "--styles", "noto", "--out", rendered, says="index.json")


# -- 6. non-finite values are an error, and nothing is saved ------------------------------------------------------


@pytest.mark.parametrize("flags", [["--guidance-scale", 1e30, "--prompt", "owl"], ["--guidance-scale", 1e308,
                                                                                   "--prompt", "owl"]])
def test_non_finite_samples_are_an_error_and_write_no_image(world, capsys, tmp_path, flags):
    root, prior, _ = world
    _refused(capsys, "generate", "--prior", prior, *GEN, *flags, "--out", tmp_path / "g", says="not finite")
    assert not list(tmp_path.glob("g/*.png"))


def test_a_huge_domain_weight_is_an_error(world, domain, capsys, tmp_path):
    root, prior, _ = world
    _refused(capsys, "generate", "--prior", prior, "--domain", f"{domain[0]}:1e308", "--steps", 2, "--num-images", 1,
             "--out", tmp_path / "g", says="not finite")
    assert not list(tmp_path.glob("g/*.png"))


def test_a_field_that_turns_non_finite_is_never_saved(world, capsys, tmp_path):
    root, prior, _ = world
    out = tmp_path / "d"
    _refused(capsys, "3d", "--prior", prior, "--prompt", "owl", "--grid-resolution", 4, "--num-samples", 4,
             "--steps", 2, "--learning-rate", 1e30, "--out", out, says="not finite")
    assert not (out / "field.safetensors").exists()


def test_a_mask_of_another_aspect_ratio_is_refused(world, capsys, tmp_path):
    root, prior, images = world
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 16), 255).save(mask)
    _refused(capsys, "edit", "--prior", prior, "--image", images / "0.png", "--mask", mask, "--domain-scale", 0,
             "--steps", 4, "--out", tmp_path / "e", says="aspect ratio")


# -- 7. a refused run never blocks its corrected rerun -------------------------------------------------------------


@pytest.mark.parametrize("bad", [["--height", 33], ["--height", 4, "--width", 4], ["--scheduler", "pndm", "--steps", 2]])
def test_a_refused_generate_leaves_nothing_behind(world, capsys, tmp_path, bad):
    root, prior, _ = world
    out = tmp_path / "g"
    _cli(capsys, "generate", "--prior", prior, "--domain-scale", 0, "--num-images", 1, *bad, "--out", out)
    assert not out.exists()
    assert _cli(capsys, "generate", "--prior", prior, *GEN, "--out", out)[0] == 0


def test_refused_edit_3d_and_train_leave_nothing_behind(world, capsys, tmp_path):
    root, prior, images = world
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    train = ["train", "--prior", prior, "--images", images, "--max-train-steps", 1]
    for argv in (["edit", "--prior", prior, "--image", tiny, *EDIT, "--out", tmp_path / "e"],
                 ["edit", "--prior", prior, "--image", images / "0.png", "--strength", 0.01, *EDIT, "--out", tmp_path / "e"],
                 ["3d", "--prior", prior, "--prompt", "owl", "--resolution", 1, "--out", tmp_path / "d"],
                 [*train, "--resolution", 2, "--output", tmp_path / "t"],
                 [*train, "--resolution", 32, "--lr-scheduler", "bogus", "--output", tmp_path / "t"],
                 [*train, "--resolution", 32, "--latent-cache", tiny, "--output", tmp_path / "t"]):
        code, err = _cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert not any((tmp_path / name).exists() for name in ("e", "d", "t")), argv


def test_a_refused_convert_does_not_suggest_a_flag_it_lacks(world, capsys, tmp_path):
    root, prior, _ = world
    dst = tmp_path / "dst"
    assert _cli(capsys, "convert", prior, dst)[0] == 0
    err = _refused(capsys, "convert", prior, dst, says="already holds")
    assert "--overwrite" not in err


def test_a_3d_state_that_cannot_be_written_mid_run_is_one_line(world, capsys, tmp_path, monkeypatch):
    """A folder made read-only mid-run: safetensors' own write error becomes one line naming the file."""
    import safetensors.torch
    from safetensors import SafetensorError

    def refuse(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    root, prior, _ = world
    _refused(capsys, "3d", "--prior", prior, "--prompt", "owl", "--grid-resolution", 4, "--num-samples", 4,
             "--steps", 1, "--out", tmp_path / "d", says="field.safetensors: cannot be written")
