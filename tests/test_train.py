import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import indomain.train as train_mod
from indomain.data import DataError, SkippedImagesWarning
from indomain.pipeline import InDomainPipeline
from indomain.testing import save_tiny_prior
from indomain.train import NonFiniteError, TrainConfig, list_checkpoints, train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    prior = save_tiny_prior(root / "prior")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    return prior, images


def config(world, out, **kw):
    prior, images = world
    base = dict(prior=str(prior), images=str(images), output=str(out), resolution=32, train_batch_size=2,
                max_train_steps=4, checkpointing_steps=2, learning_rate=1e-3, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def weights(folder):
    return load_file(Path(folder) / "diffusion_pytorch_model.safetensors")


def test_run_writes_loadable_model_logs_and_grids(world, tmp_path):
    out = train(config(world, tmp_path / "run", validation_steps=4, validation_prompts=["a cat"],
                       num_validation_images=2, validation_inference_steps=2))
    for name in ["config.json", "diffusion_pytorch_model.safetensors", "train_config.json", "train_log.jsonl", "raw/config.json"]:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step0000004_prompt01.png", "step0000004_uncond.png"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and np.isfinite(log[-1]["loss"]) and log[-1]["images_per_s"] > 0
    assert json.loads((out / "train_config.json").read_text())["learning_rate"] == 1e-3
    # EMA at the top differs from the raw weights (decay 0.9 over 4 steps)
    ema, raw = weights(out), weights(out / "raw")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    pipe = InDomainPipeline.from_pretrained(world[0], domain_unet=out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_kill_and_resume_equals_uninterrupted(world, tmp_path):
    """Bit-identical on CPU: batches, noise and timesteps are pure functions of (seed, step, rank), and the
    checkpoint holds model, optimizer, EMA and RNG. (GPU kernels that are not deterministic would need a
    tolerance of about 1e-6 instead.)"""
    full = train(config(world, tmp_path / "full", max_train_steps=6))

    def crash(step):
        if step == 3:  # after checkpoint-2 was written, before checkpoint-4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(world, tmp_path / "cut", max_train_steps=6), on_step=crash)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    resumed = train(config(world, tmp_path / "cut", max_train_steps=6, resume="latest"))
    for folder in ["", "raw"]:
        a, b = weights(full / folder), weights(resumed / folder)
        assert all(torch.equal(a[k], b[k]) for k in a), folder


@pytest.mark.parametrize("lever", [dict(compile="eager"), dict(channels_last=True)])
def test_compile_and_channels_last_train_the_same_model(world, tmp_path, lever):
    """The speed levers of `indomain train` change how the steps run, not what they compute; the saved model is plain.

    Losses are compared, not weights: AdamW's first steps move every weight by about ±lr whatever the gradient's size,
    so a rounding difference in a near-zero gradient (channels_last convolutions sum in another order) flips a few
    updates."""
    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()]

    reference_dir = train(config(world, tmp_path / "reference", log_every=1))
    fast_dir = train(config(world, tmp_path / "fast", log_every=1, **lever))
    assert weights(fast_dir).keys() == weights(reference_dir).keys()  # no `_orig_mod.` prefixes from compiling
    first, rest = losses(reference_dir), losses(fast_dir)
    assert len(first) == len(rest) == 4
    assert rest[0] == pytest.approx(first[0], rel=1e-5)  # step 1: the same weights, the same batch
    assert rest == pytest.approx(first, rel=1e-2)
    assert list_checkpoints(fast_dir)


def test_checkpoint_pruning_and_atomic_leftovers(world, tmp_path):
    out = tmp_path / "prune"
    out.mkdir()
    (out / ".indomain-run.json").write_text('{"command": "train"}')  # a run that was killed early
    (out / "checkpoint-99.tmp").mkdir()  # what a kill during a checkpoint save leaves behind
    (out / ".tmp-model").mkdir()  # ... and during the final save
    (out / ".tmp-model" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 1000)
    train(config(world, out, max_train_steps=5, checkpointing_steps=1, checkpoints_total_limit=2, overwrite=False, resume="latest"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-5"]
    assert (out / "checkpoint-5" / "train_state.json").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".tmp*"))


def test_existing_output_is_refused_unless_resume_or_overwrite(world, tmp_path):
    train(config(world, tmp_path / "o", max_train_steps=1))
    with pytest.raises(ValueError, match="already holds a run"):
        train(config(world, tmp_path / "o", max_train_steps=1))
    train(config(world, tmp_path / "o", max_train_steps=1, overwrite=True))


def test_bad_image_folders(world, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        train(config(world, tmp_path / "o1", images=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad"):
        train(config(world, tmp_path / "o2", images=str(bad)))


def test_corrupt_files_are_skipped_with_a_warning(world, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in world[1].iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(SkippedImagesWarning, match="broken.jpg"):
        train(config(world, tmp_path / "o", images=str(mixed), max_train_steps=1))


def test_non_finite_loss_points_to_the_checkpoint_before_the_diverging_step(world, tmp_path, monkeypatch):
    real = train_mod.denoising_loss
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        return real(*a, **k) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(train_mod, "denoising_loss", flaky)
    out = tmp_path / "nan"
    # checkpoint-1 and checkpoint-2 are written; the weights of step 2 give the NaN, so checkpoint-2 is not good
    with pytest.raises(NonFiniteError, match=r"step 2.*last good checkpoint is .*checkpoint-1\b.*--learning-rate 0.0001"):
        train(config(world, out, max_train_steps=6, checkpointing_steps=1))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert (out / "checkpoint-2.diverged").is_dir()  # set aside, not deleted, and never picked by --resume latest


def test_lora_domain_model_is_small_and_loads(world, tmp_path):
    out = train(config(world, tmp_path / "lora", lora_rank=4, max_train_steps=2))
    lora_size = sum((out / f).stat().st_size for f in ("pytorch_lora_weights.safetensors", "null_text_buffers.safetensors"))
    full_size = (world[0] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert lora_size < 0.3 * full_size
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # peft's standard adapter config
    pipe = InDomainPipeline.from_pretrained(world[0], domain_unet=out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)

    # the adapter is diffusers' pipeline LoRA format (unet. keys): it loads onto a null-text copy with load_lora_adapter ...
    from safetensors.torch import load_file as load

    from indomain.loading import load_lora

    fused = load_lora(out, pipe.unet)
    # ... and indomain 0.1's single-file format still loads to the same weights
    old = tmp_path / "old-format"
    old.mkdir()
    (old / "config.json").write_text((out / "config.json").read_text())
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from indomain import NullTextUNet

    probe = NullTextUNet(**{k: v for k, v in json.loads((out / "config.json").read_text()).items()
                            if not k.startswith("_") and k != "lora"})
    probe.unet.load_lora_adapter(str(out), weight_name="pytorch_lora_weights.safetensors", prefix="unet", adapter_name="default")
    tensors = {f"lora.{k}": v.contiguous() for k, v in get_peft_model_state_dict(probe.unet).items()}
    tensors |= {f"buffer.{k}": v for k, v in load(out / "null_text_buffers.safetensors").items()}
    save_file(tensors, old / "lora_weights.safetensors")
    again = load_lora(old, pipe.unet)
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("lora", [None, 4])
def test_baseline_fine_tune_supports_cfg_and_rectified(world, tmp_path, lora):
    from diffusers import UNet2DConditionModel

    out = train(config(world, tmp_path / "base", baseline=True, caption="a photo of <domain>", lora_rank=lora, max_train_steps=2))
    tuned = UNet2DConditionModel.from_pretrained(out)
    # conventional CFG: everything from the fine-tune
    cfg = InDomainPipeline.from_pretrained(world[0], unet=tuned)
    cfg.set_progress_bar_config(disable=True)
    a = cfg("a photo of <domain>", domain_guidance_scale=0, guidance_scale=3.0, num_inference_steps=2, output_type="np").images
    # rectified: unconditional from the prior, conditional from the fine-tune
    rect = InDomainPipeline.from_pretrained(world[0], domain_unet=out)
    rect.set_progress_bar_config(disable=True)
    b = rect(domain_prompt="a photo of <domain>", guidance_scale=0, domain_guidance_scale=3.0, num_inference_steps=2, output_type="np").images
    assert a.shape == b.shape == (1, 32, 32, 3) and abs(a - b).max() > 1e-4


def test_latent_cache_is_reused_and_holds_both_flips(world, tmp_path):
    out = train(config(world, tmp_path / "c", max_train_steps=1, cache_shard_size=4, cache_batch_size=3))
    shards = sorted((out / "latent_cache").iterdir())
    assert [p.name for p in shards] == ["latents-00000.safetensors", "latents-00001.safetensors"]  # 6 images, 4 a shard
    keys = set(load_file(shards[0])) | set(load_file(shards[1]))
    assert keys == {f"{i}" for i in range(6)} | {f"{i}_flip" for i in range(6)} | {f"{i}_size" for i in range(6)}
    assert load_file(shards[0])["0_size"].tolist() == [40, 36]  # the original (height, width), for SDXL's time ids
    record = json.loads((out / ".indomain-run.json").read_text())
    assert {"latent_cache/latents-00000.safetensors", "latent_cache/latents-00001.safetensors"} <= set(record["written"])
    mtimes = [p.stat().st_mtime_ns for p in shards]
    train(config(world, tmp_path / "c", max_train_steps=2, resume="latest", cache_shard_size=4, cache_batch_size=3))
    assert [p.stat().st_mtime_ns for p in shards] == mtimes


def test_two_process_data_parallel_run(world, tmp_path):
    """A real 2-process gloo run through accelerate's launcher (torchrun underneath)."""
    prior, images = world
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "indomain.cli", "train", "--prior", str(prior),
           "--images", str(images), "--output", str(out), "--resolution", "32", "--train-batch-size", "2",
           "--max-train-steps", "2", "--checkpointing-steps", "2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["world_size"] == 2 and log[-1]["step"] == 2
    pipe = InDomainPipeline.from_pretrained(prior, domain_unet=out)
    assert pipe.domain_unet is not None


def test_accumulation_checkpointing_and_bf16_run(world, tmp_path):
    out = train(config(world, tmp_path / "acc", gradient_accumulation_steps=2, gradient_checkpointing=True,
                       mixed_precision="bf16", max_train_steps=2, snr_gamma=5.0))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and np.isfinite(log[-1]["loss"])
    assert (out / "diffusion_pytorch_model.safetensors").is_file()


def test_8bit_adam_without_bitsandbytes_says_what_to_install(world, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *a, **k):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        train(config(world, tmp_path / "bnb", use_8bit_adam=True, max_train_steps=1))


def test_min_snr_weighting_matches_formula():
    pred, target = torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1)
    snr = torch.tensor([1.0, 10.0])
    loss = train_mod.denoising_loss(pred, target, snr, 5.0, "epsilon")
    assert torch.isclose(loss, torch.tensor((1.0 + 0.5) / 2))
    assert torch.isclose(train_mod.denoising_loss(pred, target, None, None, "epsilon"), torch.tensor(1.0))


def test_non_finite_validation_image_stops_before_checkpointing_it(world, tmp_path, monkeypatch):
    from indomain.pipeline import InDomainPipelineOutput

    monkeypatch.setattr(InDomainPipeline, "__call__",
                        lambda self, **kw: InDomainPipelineOutput(images=torch.full((2, 3, 32, 32), float("nan"))))
    with pytest.raises(NonFiniteError, match="non-finite pixels.*checkpoint-2"):
        train(config(world, tmp_path / "v", max_train_steps=4, validation_steps=4, num_validation_images=2))
    assert [p.name for p in list_checkpoints(tmp_path / "v")] == ["checkpoint-2"]


def test_model_card_and_tensorboard(world, tmp_path):
    from huggingface_hub import ModelCard

    out = train(config(world, tmp_path / "card", max_train_steps=2, report_to="tensorboard", log_every=1))
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and "indomain" in card.data.tags  # a local prior: no path on the Hub (#25)
    assert "6 unlabeled images" in card.text and "2 optimizer steps" in card.text
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_report_to_a_tracker_that_is_not_installed_says_what_to_install(world, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ValueError, match="pip install wandb"):
        train(config(world, tmp_path / "w", report_to="wandb"))
    assert not (tmp_path / "w").exists()


def test_lora_run_does_not_depend_on_the_global_rng(world, tmp_path):
    torch.manual_seed(123)
    a = train(config(world, tmp_path / "a", lora_rank=2, max_train_steps=1))
    torch.rand(1000)  # whatever ran before in the process
    b = train(config(world, tmp_path / "b", lora_rank=2, max_train_steps=1))
    wa, wb = load_file(a / "pytorch_lora_weights.safetensors"), load_file(b / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_sharded_plugin_branch_is_chosen_by_the_distributed_type():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    pick = train_mod.sharding_plugin
    assert pick(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)) == "deepspeed"
    assert pick(SimpleNamespace(distributed_type=DistributedType.FSDP)) == "fsdp"
    for plain in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        assert pick(SimpleNamespace(distributed_type=plain)) is None


def test_under_a_sharding_plugin_checkpoints_go_through_accelerate_save_and_load_state(world, tmp_path, monkeypatch):
    """DeepSpeed / FSDP cannot run on a CPU; this runs their branch (accelerator.save_state / load_state, gathered
    weights) on a one-process accelerator, whose save_state writes what DeepSpeed ZeRO-2's does minus the shards."""
    monkeypatch.setattr(train_mod, "sharding_plugin", lambda accelerator: "deepspeed")
    full = train(config(world, tmp_path / "full", max_train_steps=4))
    ckpt = full / "checkpoint-2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["accelerate", "ema.safetensors", "model", "rng.safetensors",
                                                      "train_state.json"]  # no optimizer.pt: accelerate/ holds it
    assert sorted(p.name for p in (ckpt / "accelerate").iterdir()) == ["model.safetensors", "optimizer.bin", "scheduler.bin"]

    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(world, tmp_path / "cut", max_train_steps=4), on_step=crash)
    resumed = train(config(world, tmp_path / "cut", max_train_steps=4, resume="latest"))
    for folder in ["", "raw"]:
        a, b = weights(full / folder), weights(resumed / folder)
        assert all(torch.equal(a[k], b[k]) for k in a), folder
    # a checkpoint of that branch is refused by a plain run, with a reason
    monkeypatch.setattr(train_mod, "sharding_plugin", lambda accelerator: None)
    with pytest.raises(ValueError, match="DeepSpeed / FSDP"):
        train(config(world, tmp_path / "plain", max_train_steps=4, resume=str(ckpt)))
    # a torch archive in accelerate/ that is not plain tensors is refused before accelerate loads it
    import pickle

    (ckpt / "accelerate" / "scheduler.bin").write_bytes(pickle.dumps(SystemExit))
    from indomain.checkpoint import CheckpointError, read_checkpoint

    with pytest.raises(CheckpointError, match="scheduler.bin: refused.*--allow-pickle"):
        read_checkpoint(ckpt)


def test_fsdp_refuses_ema_with_a_reason(world, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "sharding_plugin", lambda accelerator: "fsdp")
    with pytest.raises(ValueError, match="EMA is not supported under FSDP.*--no-ema"):
        train(config(world, tmp_path / "f", max_train_steps=1))
    assert not (tmp_path / "f").exists()
