"""Training at scale (#26): peak memory against dataset size, kills during the latent cache, loop throughput.

    python benchmarks/train_scale.py rss --images 2000 20000           # peak RSS: cache build, then 1 training step
    python benchmarks/train_scale.py kill --images 200 --repeats 5      # SIGKILL mid-cache, rerun, compare bit for bit
    python benchmarks/train_scale.py loop --images 64 --steps 30        # images/s of `indomain train` after caching
    python benchmarks/train_scale.py encode --images 256                # seconds per image to build the cache

Every run is `indomain train` in its own subprocess, on the tiny prior of `indomain.testing` (random weights; VAE
factor 2) and synthetic PNGs (smooth random colour fields) generated once per size in --workdir. ``--src`` runs
another checkout's code (e.g. the code before #26, exported with ``git archive``) for before/after rows.
Peak RSS is the child's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from indomain.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(folder: Path, n: int, size: int = 64) -> Path:
    """``n`` smooth random PNGs of ``size`` px (a 4x4 colour field, upscaled), written once."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.png")))
    rng = np.random.default_rng(n)
    for i in range(have, n):
        small = Image.fromarray((rng.random((4, 4, 3)) * 255).astype("uint8"))
        small.resize((size, size), Image.BILINEAR).save(folder / f"{i:07d}.png")
    return folder


def prior(workdir: Path, src: str) -> Path:
    folder = workdir / "prior"
    if not folder.exists():
        subprocess.run([sys.executable, "-c", f"from indomain.testing import save_tiny_prior; save_tiny_prior({str(folder)!r})"],
                       env=env(src), check=True)
    return folder


def env(src: str) -> dict:
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "HF_HUB_OFFLINE": "1"}


def train_args(workdir: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["--quiet", "train", "--prior", str(prior(workdir, SRC)), "--images", str(images), "--output", str(out),
            "--resolution", "64", "--train-batch-size", "4", "--checkpointing-steps", "100000", "--no-ema", *extra]


def run_train(args: list[str], src: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, *args], env=env(src), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"indomain train failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cmd_rss(a: argparse.Namespace) -> list[dict]:
    rows = []
    for n in a.images:
        images = make_images(a.workdir / f"images-{n}", n)
        cache = a.workdir / f"cache-{n}-{a.label}"
        extra = ["--latent-cache", str(cache)] if "latent-cache" in a.cache_flags else []
        first = run_train(train_args(a.workdir, images, a.workdir / f"run-{n}-{a.label}-a", "--max-train-steps", "1",
                                     "--overwrite", *extra), a.src)
        second = run_train(train_args(a.workdir, images, a.workdir / f"run-{n}-{a.label}-b", "--max-train-steps", "1",
                                      "--overwrite", *extra), a.src)  # the cache exists: training only
        rows.append({"images": n, "label": a.label, "build_and_step_peak_mib": round(first["peak_rss_mib"]),
                     "build_seconds": round(first["seconds"], 1), "step_after_cache_peak_mib": round(second["peak_rss_mib"])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _shards(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {p.name: load_file(p) for p in sorted(folder.glob("latents-*.safetensors"))}


def cmd_kill(a: argparse.Namespace) -> list[dict]:
    import random

    import torch

    n = a.images[0]
    images = make_images(a.workdir / f"images-{n}", n)
    common = ["--max-train-steps", "1", "--cache-shard-size", str(a.shard_size)]
    ref_cache = a.workdir / "kill-ref-cache"
    run_train(train_args(a.workdir, images, a.workdir / "kill-ref", "--latent-cache", str(ref_cache), "--overwrite", *common), a.src)
    ref = _shards(ref_cache)
    rows, rnd = [], random.Random(0)
    for r in range(a.repeats):
        cache = a.workdir / f"kill-cache-{r}"
        out = a.workdir / f"kill-run-{r}"
        args = train_args(a.workdir, images, out, "--latent-cache", str(cache), *common)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *args, "--overwrite"], env=env(a.src), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        want = rnd.randint(1, max(1, n // a.shard_size - 1))  # kill once this many shards are on disk
        while proc.poll() is None and len(list(cache.glob("latents-*.safetensors"))) < want:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = len(list(cache.glob("latents-*.safetensors")))
        t0 = time.perf_counter()
        run_train([*args, "--resume", "latest"], a.src)  # what a user does after a kill
        again = _shards(cache)
        same = again.keys() == ref.keys() and all(torch.equal(again[f][k], ref[f][k]) for f in ref for k in ref[f])
        rows.append({"repeat": r, "shards_before_rerun": before, "of": len(ref), "rerun_seconds": round(time.perf_counter() - t0, 1),
                     "bit_identical": same})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def cmd_loop(a: argparse.Namespace) -> list[dict]:
    n = a.images[0]
    images = make_images(a.workdir / f"images-{n}", n)
    cache = a.workdir / f"loop-cache-{a.label}"
    out = a.workdir / f"loop-run-{a.label}"
    run_train(train_args(a.workdir, images, out, "--latent-cache", str(cache), "--max-train-steps", "1", "--overwrite"), a.src)
    res = run_train(train_args(a.workdir, images, out, "--latent-cache", str(cache), "--max-train-steps", str(a.steps),
                               "--overwrite", "--log-every", "1", "--train-batch-size", str(a.batch)), a.src)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    speeds = sorted(r["images_per_s"] for r in log[3:])  # after 3 warm-up steps
    row = {"label": a.label, "batch": a.batch, "steps": a.steps, "median_images_per_s": speeds[len(speeds) // 2],
           "seconds": round(res["seconds"], 1)}
    print(json.dumps(row), flush=True)
    return [row]


def cmd_encode(a: argparse.Namespace) -> list[dict]:
    n = a.images[0]
    images = make_images(a.workdir / f"images-{n}", n)
    rows = []
    for flags in (["--cache-batch-size", "1"], ["--cache-batch-size", "16"]):
        cache = a.workdir / f"encode-cache-{flags[-1]}"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        res = run_train(train_args(a.workdir, images, a.workdir / "encode-run", "--latent-cache", str(cache),
                                   "--max-train-steps", "1", "--overwrite", *flags), a.src)
        rows.append({"flags": " ".join(flags), "images": n, "seconds": round(res["seconds"], 1),
                     "ms_per_image_all_in": round(1000 * res["seconds"] / n, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


SRC = str(Path(__file__).resolve().parents[1] / "src")


def main() -> None:
    global SRC
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rss", "kill", "loop", "encode"])
    p.add_argument("--images", type=int, nargs="+", default=[2000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/indomain-train-scale"))
    p.add_argument("--src", default=SRC, help="the indomain source folder to run (default: this checkout's)")
    p.add_argument("--label", default="this", help="a name for this code in the rows (before / after)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cache-flags", default="latent-cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    SRC = a.src
    rows = {"rss": cmd_rss, "kill": cmd_kill, "loop": cmd_loop, "encode": cmd_encode}[a.what](a)
    print(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows}))


if __name__ == "__main__":
    main()
