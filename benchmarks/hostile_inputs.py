"""Replay hostile and careless inputs to the command line and print the table of docs/RELIABILITY.md.

    python benchmarks/hostile_inputs.py            # prints a Markdown table

Each case runs one `indomain` command in this process (as `indomain.cli.main`) on a tiny random prior in a
temporary folder and records what a user sees: the exit code, the first `error:` line, whether a raw traceback
escaped, whether code planted in a file ran, and whether any user file was lost.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


class Payload:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.makedirs, (self.sentinel,))


def craft(path: Path, sentinel: Path) -> None:
    path.write_bytes(pickle.dumps({"state": Payload(str(sentinel))}))


def read_only_folder(root: Path) -> tuple[Path, callable]:
    """A folder nobody may write (a read-only bind mount as root, where chmod is ignored) and its clean-up."""
    folder, src = root / "read-only", root / "read-only-src"
    folder.mkdir()
    src.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder, lambda: folder.chmod(0o755)
    ok = subprocess.run(["mount", "--bind", str(src), str(folder)], capture_output=True).returncode == 0
    ok = ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode == 0
    umount = lambda: subprocess.run(["umount", str(folder)], capture_output=True)  # noqa: E731
    if not ok:
        umount()
        return None, umount
    return folder, umount


def run(argv: list) -> tuple[int | str, str]:
    from indomain.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: BLE001 - a raw traceback is exactly what we look for
            traceback.print_exc(file=err)
            code = "traceback"
    return code, err.getvalue()


def main() -> None:
    import numpy as np
    from PIL import Image

    from indomain.testing import save_tiny_prior, tiny_unet

    root = Path(tempfile.mkdtemp(prefix="indomain-hostile-"))
    prior = save_tiny_prior(root / "prior")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    train = ["train", "--prior", prior, "--images", images, "--resolution", 32, "--train-batch-size", 2]
    run([*train, "--output", root / "run", "--max-train-steps", 2, "--checkpointing-steps", 1])
    rows = []

    def case(name: str, argv: list, sentinel: Path | None = None, keep: list[Path] = ()) -> None:
        code, err = run(argv)
        lines = [line for line in err.splitlines() if "error:" in line]
        said = [line for line in err.splitlines() if line.strip() and "%|" not in line and "[transformers]" not in line]
        message = lines[-1].split("error:", 1)[1].strip() if lines else (said[0] if said else "(nothing)")
        message = message.replace(str(root), "<tmp>")
        ran = "**yes**" if sentinel is not None and sentinel.exists() else "no"
        lost = [str(p.name) for p in keep if not p.exists()]
        rows.append((name, str(code), "**yes**" if code == "traceback" else "no", ran, ", ".join(lost) or "none",
                     message[:140].replace("|", "/")))

    def resume_copy(tag: str) -> Path:
        out = root / f"resume-{tag}"
        shutil.copytree(root / "run", out)
        return out

    # 1. crafted checkpoints
    ckpt_files = [p.relative_to(root / "run" / "checkpoint-2") for p in (root / "run" / "checkpoint-2").rglob("*") if p.is_file()]
    for rel in sorted(ckpt_files):
        out = resume_copy(str(rel).replace("/", "_"))
        sentinel = root / f"pwned-{rel.name}"
        craft(out / "checkpoint-2" / rel, sentinel)
        case(f"resume, crafted `checkpoint-2/{rel}`", [*train, "--output", out, "--max-train-steps", 3, "--resume", "latest"], sentinel)
    for extra in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        out = resume_copy(extra)
        craft(out / "checkpoint-2" / extra, root / f"pwned-{extra}")
        case(f"resume, extra pickle `{extra}`", [*train, "--output", out, "--max-train-steps", 3, "--resume", "latest"], root / f"pwned-{extra}")

    # 2. folders that are not ours
    user = root / "user"
    shutil.copytree(images, user / "images")
    (user / "notes.txt").write_text("notes")
    keep = [user / "notes.txt", user / "images" / "0.png"]
    case("train --images out/images --output out --overwrite", [*train, "--images", user / "images", "--output", user, "--overwrite"], keep=keep)
    case("train --output <folder with notes> --overwrite", [*train, "--images", images, "--output", user, "--overwrite"], keep=keep)
    case("generate --out <folder with notes> --overwrite", ["generate", "--prior", prior, "--domain-guidance-scale", 0, "--out", user, "--overwrite"], keep=keep)
    case("evaluate --out <folder with notes> --overwrite", ["evaluate", "--prior", prior, "--num-images", 1, "--out", user, "--overwrite"], keep=keep)
    case("world benchmark --out <folder with notes>", ["world", "benchmark", "--prior", prior, "--out", user, "--no-evaluators"], keep=keep)
    case("demo --out <folder with notes> --overwrite", ["demo", "--prior", prior, "--out", user, "--overwrite"], keep=keep)
    case("train --output inside --images", [*train, "--output", images / "run"], keep=[images / "0.png"])

    # 3. divergence
    case("train --learning-rate 1e6", [*train, "--output", root / "div", "--max-train-steps", 4, "--checkpointing-steps", 1, "--learning-rate", 1e6])

    # 4 and 5. numbers, paths and formats
    for flag, value in [("--steps", 0), ("--steps", -1), ("--num-images", 0), ("--num-images", -1)]:
        case(f"generate {flag} {value}", ["generate", "--prior", prior, "--out", root / "g", flag, value])
    for flag, value in [("--gradient-accumulation-steps", 0), ("--max-train-steps", -5), ("--checkpointing-steps", 0),
                        ("--train-batch-size", 0), ("--learning-rate", "inf"), ("--resolution", 33)]:
        case(f"train {flag} {value}", [*train, "--output", root / "t", flag, value])
    case("train --resume latest, no checkpoint", [*train, "--output", root / "fresh", "--max-train-steps", 1, "--resume", "latest"])
    case("train --resume /missing", [*train, "--output", root / "t2", "--resume", "/missing"])
    case("train --prior /does/not/exist", ["train", "--prior", "/does/not/exist", "--images", images, "--output", root / "t3"])
    no_unet = root / "prior-no-unet"
    shutil.copytree(prior, no_unet)
    (no_unet / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    case("train, prior without UNet weights", ["train", "--prior", no_unet, "--images", images, "--output", root / "t4"])
    case("generate, prior without UNet weights", ["generate", "--prior", no_unet, "--domain-guidance-scale", 0, "--out", root / "g2"])
    other = root / "prior-other"
    shutil.copytree(prior, other)
    shutil.rmtree(other / "unet")
    tiny_unet(block_out_channels=(32, 32)).save_pretrained(other / "unet")
    out = resume_copy("other-prior")
    case("train --prior B --resume latest (made with A)", ["train", "--prior", other, "--images", images, "--output", out,
                                                           "--resolution", 32, "--max-train-steps", 3, "--resume", "latest"])
    ro, cleanup = read_only_folder(root)
    if ro is not None:
        case("train --output <read-only folder>/run", [*train, "--output", ro / "run"])
        case("generate --out <read-only folder>/g", ["generate", "--prior", prior, "--domain-guidance-scale", 0, "--out", ro / "g"])
    cleanup()
    pickled = root / "prior-pickled"
    shutil.copytree(prior, pickled)
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    craft(pickled / "unet" / "diffusion_pytorch_model.bin", root / "pwned-allow-pickle")
    case("generate --allow-pickle, crafted .bin", ["generate", "--prior", pickled, "--allow-pickle", "--domain-guidance-scale", 0,
                                                   "--out", root / "g3"], root / "pwned-allow-pickle")
    case("convert <folder with a crafted .bin>", ["convert", pickled, root / "c1"], root / "pwned-allow-pickle")
    mixed = root / "prior-mixed"
    shutil.copytree(prior, mixed)
    import torch

    torch.save({"w": torch.zeros(1)}, mixed / "unet" / "diffusion_pytorch_model.bin")
    case("convert <folder mixing .safetensors and .bin>", ["convert", mixed, root / "c2"])

    # 6. issue #22: run records, inputs inside outputs, damaged state, non-finite results, refused runs
    gen = ["generate", "--prior", prior, "--domain-guidance-scale", 0, "--num-images", 2, "--steps", 1]
    edit = ["edit", "--prior", prior, "--domain-guidance-scale", 0, "--steps", 4]
    run(gen + ["--out", root / "g-run"])
    g_png = sorted((root / "g-run").glob("p00_*.png"))[0]
    case("edit --image RUN --out RUN --overwrite", [*edit, "--image", root / "g-run", "--out", root / "g-run", "--overwrite"],
         keep=[g_png])
    case("edit --mask FILE_IN_OUT --overwrite", [*edit, "--image", images / "0.png", "--mask", g_png, "--out", root / "g-run",
                                                 "--overwrite"], keep=[g_png])
    photos = root / "photos"
    shutil.copytree(images, photos)
    (photos / "settings.json").write_text("{}")
    case("generate --out <PNGs + settings.json> --overwrite", [*gen, "--out", photos, "--overwrite"], keep=[photos / "0.png"])
    model = root / "other-model"
    model.mkdir()
    for name in ("train_config.json", "README.md", "config.json", "model.safetensors", ".tmp_draft.txt"):
        (model / name).write_text("{}")
    case("train --output <another tool's model> --resume latest", [*train, "--output", model, "--resume", "latest"],
         keep=[model / ".tmp_draft.txt"])
    (root / "g-run" / "my_favourite_edit.png").write_bytes(b"x")
    case("generate --overwrite, a user's PNG inside the run", [*gen, "--out", root / "g-run", "--overwrite"],
         keep=[root / "g-run" / "my_favourite_edit.png"])
    (root / "g-run" / "my_favourite_edit.png").unlink()
    case("edit --overwrite on a generate run", [*edit, "--image", images / "0.png", "--out", root / "g-run", "--overwrite"],
         keep=[g_png])
    readme = root / "run" / "README.md"
    readme.write_text(readme.read_text() + "my notes")
    case("train --overwrite, a hand-edited README.md", [*train, "--output", root / "run", "--overwrite"], keep=[readme])
    bench = root / "bench"
    bench.mkdir()
    (bench / "RESULTS.md").write_text("mine")
    case("world benchmark --out <user's RESULTS.md>", ["world", "benchmark", "--prior", prior, "--out", bench,
                                                       "--no-evaluators"], keep=[bench / "RESULTS.md"])
    case("train --latent-cache <the --images folder>", [*train, "--output", root / "lc", "--latent-cache", images],
         keep=[images / "0.png"])
    lora = root / "pickle-lora"
    lora.mkdir()
    craft(lora / "pytorch_lora_weights.bin", root / "pwned-lora")
    case("generate --lora <pickle-only folder>", [*gen, "--lora", lora, "--out", root / "g-lora"], root / "pwned-lora")
    ip = root / "ip"
    (ip / "image_encoder").mkdir(parents=True)
    (ip / "image_encoder" / "config.json").write_text("{}")
    (ip / "ip.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    case("generate --ip-adapter <oversized header>", [*gen, "--ip-adapter", ip / "ip.safetensors", "--ip-image",
                                                      images / "0.png", "--out", root / "g-ip"])
    d3 = ["3d", "--prior", prior, "--prompt", "owl", "--grid-resolution", 4, "--num-samples", 4, "--turntable-frames", 2]
    run([*d3, "--steps", 1, "--out", root / "3d"])
    shutil.copytree(root / "3d", root / "3d-bad")
    (root / "3d-bad" / "settings.json").write_text("[]")
    case("3d --resume, settings.json is []", [*d3, "--steps", 2, "--resume", "--out", root / "3d-bad"])
    (root / "3d-bad" / "settings.json").write_text((root / "3d" / "settings.json").read_text())
    (root / "3d-bad" / "field.safetensors").unlink()
    (root / "3d-bad" / "field.safetensors").symlink_to("/etc/passwd")
    case("3d --resume, field.safetensors -> /etc/passwd", [*d3, "--steps", 2, "--resume", "--out", root / "3d-bad"])
    case("3d --resume --overwrite", [*d3, "--steps", 2, "--resume", "--overwrite", "--out", root / "3d"],
         keep=[root / "3d" / "field.safetensors"])
    case("3d --view-template '{nope}'", [*d3, "--view-template", "{nope}", "--out", root / "3d-t"])
    for device in ("bogus", "cuda:7"):
        case(f"generate --device {device}", [*gen, "--device", device, "--out", root / "g-dev"])
    case("generate --guidance-scale 1e30", [*gen, "--prompt", "owl", "--guidance-scale", 1e30, "--out", root / "g-inf"])
    case("3d --learning-rate 1e30", [*d3, "--steps", 2, "--learning-rate", 1e30, "--out", root / "3d-inf"])
    for bad in (["--height", 33], ["--scheduler", "pndm", "--steps", 2]):
        run([*gen, *bad, "--out", root / "g-bad"])
        case(f"generate {' '.join(map(str, bad))}, then the corrected rerun", [*gen, "--out", root / "g-bad"])
        shutil.rmtree(root / "g-bad", ignore_errors=True)
    run([*train, "--resolution", 2, "--max-train-steps", 1, "--output", root / "t-bad"])
    case("train --resolution 2, then the corrected rerun", [*train, "--max-train-steps", 1, "--output", root / "t-bad"])

    print("| case | exit | traceback | planted code ran | user files lost | what the user reads |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
