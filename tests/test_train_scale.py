"""Training at scale (#26): the sharded latent cache (resumable, shared by processes, stale-proof), on-the-fly
encoding, epochs, and a real two-process run that equals one process with the same global batch."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from indomain.latent_cache import ShardedLatents, shard_writers
from indomain.testing import save_tiny_prior, tiny_vae
from indomain.train import TrainConfig, build_latent_cache, train

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def one_thread():
    """This process encodes and trains on one thread, as the subprocesses do (OMP_NUM_THREADS=1): a convolution's
    float rounding depends on how many threads split it, and these tests compare results across processes bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    prior = save_tiny_prior(root / "prior")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 36), (32, 48), (36, 36), (64, 40), (32, 32), (48, 40)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    return prior, images


def config(world, out, **kw):
    prior, images = world
    base = dict(prior=str(prior), images=str(images), output=str(out), resolution=32, train_batch_size=2,
                max_train_steps=2, checkpointing_steps=2, learning_rate=1e-3, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def cache_config(world, **kw):
    return config(world, "unused", cache_shard_size=2, cache_batch_size=3, **kw)


def shards(folder):
    return {p.name: load_file(p) for p in sorted(Path(folder).glob("latents-*.safetensors"))}


# -- the cache -----------------------------------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import safetensors.torch
    from indomain.data import ImageFolderDataset
    from indomain.testing import tiny_vae
    from indomain.train import TrainConfig, build_latent_cache

    real, calls = safetensors.torch.save_file, []

    def save_then_die(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # half of the second shard is on disk when the process is killed
            Path(filename).write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        real(tensors, filename, metadata=metadata)

    safetensors.torch.save_file = save_then_die
    prior, images, cache = sys.argv[1:]
    config = TrainConfig(prior=prior, images=images, output="unused", resolution=32, cache_shard_size=2, cache_batch_size=3)
    paths = ImageFolderDataset(images, 32).paths
    build_latent_cache(paths, tiny_vae(), config, Path(cache), prior, "cpu")
""")


def test_a_kill_during_the_cache_loses_one_shard_and_the_rerun_is_bit_identical(world, tmp_path, monkeypatch):
    from indomain import latent_cache
    from indomain.data import ImageFolderDataset

    prior, images = world
    paths = ImageFolderDataset(images, 32).paths
    whole = tmp_path / "whole"
    build_latent_cache(paths, tiny_vae(), cache_config(world), whole, str(prior), "cpu")

    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", KILLER, str(prior), str(images), str(cut)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr[-2000:]  # SIGKILL, mid-write of the second shard
    assert sorted(p.name for p in cut.iterdir()) == [".latents-00001.safetensors.%s.tmp" % p.name.split(".")[-2]
                                                     for p in cut.glob(".*.tmp")] + ["latents-00000.safetensors"]

    encoded = []
    real = latent_cache.encode_items
    monkeypatch.setattr(latent_cache, "encode_items", lambda vae, items, device: encoded.extend(items) or real(vae, items, device))
    build_latent_cache(paths, tiny_vae(), cache_config(world), cut, str(prior), "cpu")
    assert sorted({it["index"] for it in encoded}) == [2, 3, 4, 5]  # only the two shards that were missing
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in whole.iterdir())  # the temporary is gone
    a, b = shards(whole), shards(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])


def test_a_stale_shard_is_rebuilt_and_never_read(world, tmp_path):
    from indomain.data import ImageFolderDataset

    prior, images = world
    paths = ImageFolderDataset(images, 32).paths
    cache = tmp_path / "c"
    reader = build_latent_cache(paths, tiny_vae(), cache_config(world), cache, str(prior), "cpu")
    before = shards(cache)
    # other settings (no flips): every shard is rebuilt, none is reused
    build_latent_cache(paths, tiny_vae(), cache_config(world, random_flip=False), cache, str(prior), "cpu")
    after = shards(cache)
    assert not any(k.endswith("_flip") for f in after.values() for k in f)
    assert before["latents-00000.safetensors"].keys() != after["latents-00000.safetensors"].keys()
    with pytest.raises(ValueError, match="latents-00000.safetensors belongs to other images or settings"):
        reader.params(0, False)  # the reader of the first cache refuses what replaced it
    # another VAE (other weights, same config): another key
    other = build_latent_cache(paths, tiny_vae(), cache_config(world, random_flip=False), cache, "another-vae", "cpu")
    assert other.key != ShardedLatents(cache, reader.key, 6, 2).key


def test_the_cache_memory_is_a_shard_not_the_dataset(world, tmp_path, monkeypatch):
    """What build_shards holds at once: at most one shard's tensors (checked at every write)."""
    import safetensors.torch

    from indomain.data import ImageFolderDataset

    prior, images = world
    paths = ImageFolderDataset(images, 32).paths
    held = []
    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", lambda t, f, metadata=None: held.append(len(t)) or real(t, f, metadata=metadata))
    build_latent_cache(paths, tiny_vae(), cache_config(world), tmp_path / "c", str(prior), "cpu")
    assert held == [6, 6, 6]  # 2 images x (latent, flip, size) per shard


# -- training ------------------------------------------------------------------------------------------------


def _log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def test_no_latent_cache_trains_the_same_batches_on_the_fly(world, tmp_path):
    cached = train(config(world, tmp_path / "cached", log_every=1, cache_batch_size=1))
    fly = train(config(world, tmp_path / "fly", log_every=1, cache_latents=False, dataloader_num_workers=1))
    assert not (fly / "latent_cache").exists()
    # the same images, flips, crops, posterior draws, noise and timesteps; only the VAE calls' batching differs
    assert [r["loss"] for r in _log(fly)] == pytest.approx([r["loss"] for r in _log(cached)], rel=1e-4)


def test_epochs_set_the_steps_unless_max_steps_is_given(world, tmp_path):
    out = train(config(world, tmp_path / "e", max_train_steps=None, num_train_epochs=2, checkpointing_steps=100))
    # 6 images, 2 a step: 3 steps an epoch
    assert json.loads((out / "train_config.json").read_text())["max_train_steps"] == 6
    assert _log(out)[-1]["step"] == 6
    assert config(world, "x", max_train_steps=1, num_train_epochs=5).resolve_steps(6, 1) == 1
    assert TrainConfig(prior="p", images="i", output="o").max_train_steps == 10_000  # neither given
    with pytest.raises(ValueError, match="--num-train-epochs must be a whole number >= 1"):
        config(world, "x", num_train_epochs=0).validate()
    with pytest.raises(ValueError, match="--no-latent-cache"):
        config(world, "x", cache_latents=False, latent_cache=str(tmp_path)).validate()


def test_the_process_group_timeout_reaches_accelerate(world, tmp_path, monkeypatch):
    import accelerate

    seen = []
    real = accelerate.Accelerator.__init__

    def spy(self, *a, **kw):
        seen.extend(h.to_kwargs() for h in kw.get("kwargs_handlers", []))
        real(self, *a, **kw)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", spy)
    train(config(world, tmp_path / "t", max_train_steps=1, ddp_timeout=77))
    assert [k["timeout"].total_seconds() for k in seen] == [77]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available, so `accelerate launch` cannot start 2 processes")
def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(world, tmp_path):
    """A real 2-process gloo run through accelerate's launcher (torchrun underneath): each process encodes half the
    cache, trains on half of each global batch, and the weights equal a 1-process run with twice the batch.

    AdamW's epsilon is 1 here: with the usual 1e-8 every weight moves by about ±lr whatever its gradient's size, so
    a gradient that is zero up to rounding (summed in another order by the all-reduce) flips a few updates by 2 lr;
    with epsilon 1 an update is proportional to its gradient, and rounding stays rounding."""
    prior, images = world
    two = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "indomain.cli",
           "train", "--prior", str(prior), "--images", str(images), "--output", str(two), "--resolution", "32",
           "--train-batch-size", "2", "--max-train-steps", "3", "--checkpointing-steps", "3", "--learning-rate", "0.1",
           "--adam-epsilon", "1", "--ema-decay", "0.9", "--cache-shard-size", "1", "--random-crop", "--log-every", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in res.stderr.splitlines() if "error:" in line or "Error" in line]
    assert res.returncode == 0, "\n".join(errors[:10]) + "\n...\n" + res.stderr[-2000:]
    assert _log(two)[-1]["world_size"] == 2 and _log(two)[-1]["step"] == 3
    writers = shard_writers(two / "latent_cache", 6, 1)
    assert sorted(writers.values()) == [0, 0, 0, 1, 1, 1]  # each process encoded half the cache

    one = train(config(world, tmp_path / "one", train_batch_size=4, max_train_steps=3, checkpointing_steps=3,
                       cache_shard_size=1, center_crop=False, log_every=1, learning_rate=0.1, adam_epsilon=1.0))
    a, b = load_file(one / "raw" / "diffusion_pytorch_model.safetensors"), load_file(two / "raw" / "diffusion_pytorch_model.safetensors")
    prior_unet = load_file(prior / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    moved = max((a[k] - prior_unet[k.removeprefix("unet.")]).abs().max().item()
                for k in a if k.removeprefix("unet.") in prior_unet)  # the training did move the weights
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6 and moved > 1e-3, (worst, moved)
    assert [r["loss"] for r in _log(two)] == pytest.approx([r["loss"] for r in _log(one)], rel=1e-5)
    c1, c2 = shards(one / "latent_cache"), shards(two / "latent_cache")
    assert all(torch.equal(c1[f][k], c2[f][k]) for f in c1 for k in c1[f])  # the same cache, whoever encoded it


# -- the datasets library --------------------------------------------------------------------------------------


def test_a_datasets_parquet_or_imagefolder_trains_like_the_folder(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    prior, images = world
    files = sorted(images.glob("*.png"))
    table = datasets.Dataset.from_dict({"picture": [str(p) for p in files], "label": list(range(len(files)))})
    table = table.cast_column("picture", datasets.Image())
    pq = tmp_path / "pq"
    pq.mkdir()
    table.to_parquet(str(pq / "train-00000.parquet"))

    folder = train(config(world, tmp_path / "folder", log_every=1))
    from_parquet = train(config(world, tmp_path / "parquet", images=None, dataset_dir=str(pq), log_every=1))
    from_imagefolder = train(config(world, tmp_path / "imgf", images=None, dataset_name="imagefolder",
                                    dataset_dir=str(images), log_every=1, cache_latents=False))
    # the same images in the same order: the same batches and losses
    losses = [r["loss"] for r in _log(folder)]
    assert [r["loss"] for r in _log(from_parquet)] == pytest.approx(losses, rel=1e-6)
    assert [r["loss"] for r in _log(from_imagefolder)] == pytest.approx(losses, rel=1e-4)
    assert "unlabeled images from `" + str(pq) in (from_parquet / "README.md").read_text()

    from indomain.data import DataError, load_image_dataset

    with pytest.raises(DataError, match="--image-column 'label' .* is not an image column"):
        load_image_dataset(None, str(pq), column="label")
    with pytest.raises(DataError, match="--image-column 'nope' is not a column .*columns: picture, label"):
        load_image_dataset(None, str(pq), column="nope")
    with pytest.raises(DataError, match="--dataset-split 'test'"):
        load_image_dataset(None, str(pq), split="test")
    with pytest.raises(ValueError, match="two sources of images"):
        config(world, "x", dataset_dir=str(pq)).validate()


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_no_latent_cache_trains_every_family(world, tmp_path, family):
    """On the fly, the size conditioning (SDXL) and the shifted latents (SD3) come out as from the cache."""
    prior = save_tiny_prior(tmp_path / f"prior-{family}", family=family)
    kw = dict(prior=str(prior), train_batch_size=2, max_train_steps=1, log_every=1, random_flip=False)
    cached = train(config(world, tmp_path / "c", **kw))
    fly = train(config(world, tmp_path / "f", cache_latents=False, **kw))
    assert _log(fly)[0]["loss"] == pytest.approx(_log(cached)[0]["loss"], rel=1e-4)


# -- aspect-ratio buckets ----------------------------------------------------------------------------------------


def test_aspect_buckets_cover_1_2_to_2_1_with_the_area_of_the_resolution():
    from indomain.latent_cache import aspect_buckets, bucket_for

    buckets = aspect_buckets(1024, 64)
    assert (1024, 1024) in buckets and (768, 1344) in buckets and (1344, 768) in buckets  # SDXL's usual ones
    assert all(h % 64 == 0 and w % 64 == 0 and h * w <= 1024 * 1024 and 0.5 <= w / h <= 2 for h, w in buckets)
    assert bucket_for(1080, 1920, buckets) == (768, 1344)  # 16:9 landscape
    assert bucket_for(500, 500, buckets) == (1024, 1024)


def test_sdxl_trains_in_aspect_buckets_with_its_size_conditioning(world, tmp_path, monkeypatch):
    import indomain.train as train_mod

    prior = save_tiny_prior(tmp_path / "prior-sdxl", family="sdxl")
    seen = []
    real = train_mod.LatentBatches.get

    def spy(self, *a, **k):
        latents, gens = real(self, *a, **k)
        seen.append((tuple(latents.shape), self.time_ids.clone()))
        return latents, gens

    monkeypatch.setattr(train_mod.LatentBatches, "get", spy)
    # 6 images: 40x36, 32x48, 36x36, 64x40, 32x32, 48x40 (h x w); resolution 32, step 4 (VAE 2 x UNet 2)
    out = train(config(world, tmp_path / "b", prior=str(prior), max_train_steps=6, log_every=1, random_flip=False))
    cache = out / "latent_cache"
    shapes = {}
    for f in sorted(cache.glob("latents-*.safetensors")):
        shapes.update({k: tuple(v.shape) for k, v in load_file(f).items() if k.isdigit()})
    # buckets at 32 px, step 4: 40x24, 36x28, 32x32, 28x36, 24x40 (h x w); latents are half that
    assert shapes["1"][-2:] == (12, 20) and shapes["3"][-2:] == (20, 12) and shapes["4"][-2:] == (16, 16)
    for shape, ids in seen:
        h, w = shape[-2:]
        assert (ids[:, 4:] == torch.tensor([h * 2, w * 2])).all()  # target size = the batch's bucket, in pixels
    assert any(s[-2:] != (16, 16) for s, _ in seen)  # not everything went square
    crops = {tuple(r[:2].tolist()): tuple(r[2:4].tolist()) for _, ids in seen for r in ids}
    assert crops[(32.0, 48.0)] == (1.0, 0.0)  # 32x48 -> 27x40 (covers the 24x40 bucket), cropped 1 row from the top


def test_bucket_batches_are_the_same_global_batch_on_any_number_of_processes():
    from indomain.train import LatentBatches

    cfg = TrainConfig(prior="p", images="i", output="o", train_batch_size=2, seed=3)
    one = LatentBatches(None, 7, cfg, 16, 1.0, bucket_of=[0, 1, 0, 2, 1, 0, 0])
    cfg1 = TrainConfig(prior="p", images="i", output="o", train_batch_size=1, seed=3)
    two = LatentBatches(None, 7, cfg1, 16, 1.0, bucket_of=[0, 1, 0, 2, 1, 0, 0])
    buckets = [0, 1, 0, 2, 1, 0, 0]
    for step in range(12):
        whole = one.plan(step, 0, 0, 1)
        assert whole == two.plan(step, 0, 0, 2) + two.plan(step, 0, 1, 2)
        assert len({buckets[i] for _, i, _ in whole}) == 1  # one bucket per batch
    # an epoch (5 batches: buckets of 4, 2 and 1 images in batches of 2) shows every image
    assert {i for s in range(5) for _, i, _ in one.plan(s, 0, 0, 1)} == set(range(7))
