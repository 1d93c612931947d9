"""Training at scale: peak memory against dataset size, kills during the latent cache, loop throughput.

    python benchmarks/train_scale.py rss --images 2000 20000           # peak RSS: cache build, then 1 training step
    python benchmarks/train_scale.py kill --images 200 --repeats 5      # SIGKILL mid-cache, rerun, compare bit for bit
    python benchmarks/train_scale.py loop --images 64 --steps 30        # images/s of `indomain train` after caching
    python benchmarks/train_scale.py encode --images 256                # seconds per image to build the cache
    python benchmarks/train_scale.py read --images 256 --batch 16       # the data path of a step alone (--src: before)
    python benchmarks/train_scale.py estimate                           # per-image costs at 512 px, for the estimate

Every run is `indomain train` in its own subprocess, on the tiny prior of `indomain.testing` (random weights; VAE
factor 2) and synthetic PNGs (smooth random colour fields) generated once per size in --workdir. ``--src`` runs
another checkout's code (e.g. the code before the sharded cache, exported with ``git archive``) for before/after rows.
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
        extra = (["--latent-cache", str(cache)] if "latent-cache" in a.cache_flags else []) + a.train_flags.split()
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


READ = r"""
import inspect, json, sys, time, torch
from pathlib import Path
from indomain.data import ImageFolderDataset
from indomain.testing import tiny_vae
import indomain.train as T
images, cache, batch, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = T.TrainConfig(prior="unused", images=images, output="unused", resolution=64, train_batch_size=batch,
                       center_crop=False)
paths = ImageFolderDataset(images, 64).paths
new = "source" in inspect.signature(T.LatentBatches.__init__).parameters
if new:  # after #26: shards, per-sample generators
    src = T.build_latent_cache(paths, tiny_vae(), config, cache, "tiny", "cpu")
else:  # before: one file, one generator per micro-batch
    src = T.build_latent_cache(paths, tiny_vae(), config, cache / "latents.safetensors", "tiny", "cpu")
batches = T.LatentBatches(src, len(paths), config, 16, 0.18215, vae_factor=2)
def one(step):
    if new:
        lat, gens = batches.get(step, 0, 0, 1)
        noise = torch.stack([torch.randn(lat.shape[1:], generator=g) for g in gens])
        t = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in gens])
    else:
        gen = torch.Generator().manual_seed(step)
        lat = batches.get(step, 0, 0, 1, gen)
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
    return lat, noise, t
for s in range(5):
    one(s)
t0 = time.perf_counter()
for s in range(steps):
    one(s)
print(json.dumps({"ms_per_batch": 1000 * (time.perf_counter() - t0) / steps, "batch": batch, "images": len(paths)}))
"""


def cmd_read(a: argparse.Namespace) -> list[dict]:
    """The data path of one training step alone (LatentBatches.get + noise + timesteps), from a built cache."""
    n = a.images[0]
    images = make_images(a.workdir / f"images-{n}", n)
    cache = a.workdir / f"read-cache-{a.label}"
    cache.mkdir(exist_ok=True)
    res = subprocess.run([sys.executable, "-c", READ, str(images), str(cache), str(a.batch), str(a.steps)], env=env(a.src),
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    row = {"label": a.label, **json.loads(res.stdout.strip().splitlines()[-1])}
    print(json.dumps(row), flush=True)
    return [row]


ESTIMATE = r"""
import json, os, resource, sys, tempfile, time, torch
from pathlib import Path
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from indomain.latent_cache import ShardedLatents
torch.manual_seed(0)
out = {}
# 1. the SD VAE's encoder (SD 1.5 architecture, random weights) on one 512 px image, fp32, this CPU
vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
x = torch.randn(1, 3, 512, 512)
with torch.no_grad():
    vae.encode(x)
    t0 = time.perf_counter(); vae.encode(x); out["sd_vae_encode_512_cpu_s"] = time.perf_counter() - t0
# 2. a shard of 512 px SD latents: 64 images x (mean+logvar 8x64x64 fp32, its flip), written then read back by memory map
shard = 64
tensors = {}
for i in range(shard):
    tensors[f"{i}"] = torch.randn(8, 64, 64); tensors[f"{i}_flip"] = torch.randn(8, 64, 64)
    tensors[f"{i}_size"] = torch.tensor([1024, 1024])
d = Path(tempfile.mkdtemp())
t0 = time.perf_counter()
save_file(tensors, d / "latents-00000.safetensors", metadata={"key": "k", "shard": "0"})
out["shard_write_ms_per_image"] = 1000 * (time.perf_counter() - t0) / shard
out["bytes_per_image"] = (d / "latents-00000.safetensors").stat().st_size / shard
r = ShardedLatents(d, "k", shard, shard)
t0 = time.perf_counter()
for k in range(2000):
    p = r.params(k % shard, bool(k % 2))[:, :64, :64]
    m, lv = p.chunk(2, 0); z = m + torch.exp(0.5 * lv) * torch.randn(m.shape)
out["read_and_sample_ms_per_image"] = 1000 * (time.perf_counter() - t0) / 2000
print(json.dumps(out))
"""


def cmd_estimate(a: argparse.Namespace) -> list[dict]:
    """Per-image costs at SD 1.5's 512 px on this CPU, for the paper-scale estimate in BENCHMARKS.md."""
    res = subprocess.run([sys.executable, "-c", ESTIMATE], env=env(a.src), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return [row]


SRC = str(Path(__file__).resolve().parents[1] / "src")


def main() -> None:
    global SRC
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rss", "kill", "loop", "encode", "read", "estimate"])
    p.add_argument("--images", type=int, nargs="+", default=[2000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/indomain-train-scale"))
    p.add_argument("--src", default=SRC, help="the indomain source folder to run (default: this checkout's)")
    p.add_argument("--label", default="this", help="a name for this code in the rows (before / after)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cache-flags", default="latent-cache", help=argparse.SUPPRESS)
    p.add_argument("--train-flags", default="", help="more `indomain train` flags for rss, e.g. '--no-flip --cache-batch-size 1'")
    a = p.parse_args()
    SRC = a.src
    rows = {"rss": cmd_rss, "kill": cmd_kill, "loop": cmd_loop, "encode": cmd_encode, "read": cmd_read,
            "estimate": cmd_estimate}[a.what](a)
    print(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows}))


if __name__ == "__main__":
    main()
