import json

import pytest
import torch

from indomain.cli import main
from indomain.pipeline import InDomainPipeline


@pytest.fixture(scope="module")
def tiny_prior_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "run"
    rc = main(["world", "train-prior", "--out", str(out), "--vae-steps", "2", "--unet-steps", "3",
               "--unet-batch", "4", "--checkpoint-every", "2", "--limit", "6"])
    assert rc == 0
    return out


def test_train_prior_writes_a_loadable_sd_pipeline(tiny_prior_run):
    pipe = InDomainPipeline.from_pretrained(tiny_prior_run / "pipeline", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.cross_attention_dim == 384 and pipe.tokenizer.model_max_length == 16
    images = pipe("red apple", domain_guidance_scale=0, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the data


def test_train_prior_resumes_where_it_stopped(tiny_prior_run):
    state = torch.load(tiny_prior_run / "unet_state.pt", weights_only=False)
    assert state["step"] == 3
    rc = main(["world", "train-prior", "--out", str(tiny_prior_run), "--vae-steps", "2", "--unet-steps", "4",
               "--unet-batch", "4", "--checkpoint-every", "2", "--limit", "6"])
    assert rc == 0
    assert torch.load(tiny_prior_run / "unet_state.pt", weights_only=False)["step"] == 4
    steps = [json.loads(line)["step"] for line in (tiny_prior_run / "unet_log.jsonl").read_text().splitlines()] if (tiny_prior_run / "unet_log.jsonl").read_text() else []
    assert steps == sorted(steps)


def test_train_prior_continues_from_weights_alone(tiny_prior_run, tmp_path):
    """--init-from: the VAE is kept byte for byte, the UNet starts from the given weights, steps count on."""
    from diffusers import UNet2DConditionModel

    out = tmp_path / "continued"
    rc = main(["world", "train-prior", "--out", str(out), "--unet-steps", "5", "--unet-batch", "4",
               "--checkpoint-every", "2", "--limit", "6", "--init-from", str(tiny_prior_run / "pipeline"),
               "--init-step", "4", "--vae-steps", "1"])
    assert rc == 0
    assert not (out / "vae_state.pt").exists()  # the VAE was not trained
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        assert (out / "vae" / name).read_bytes() == (tiny_prior_run / "pipeline" / "vae" / name).read_bytes()
    assert torch.load(out / "unet_state.pt", weights_only=True)["step"] == 5  # one step after step 4
    start = UNet2DConditionModel.from_pretrained(tiny_prior_run / "pipeline" / "unet")
    after = UNet2DConditionModel.from_pretrained(out / "unet")
    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(start.parameters(), after.parameters())]
    assert 0 < max(diffs) < 0.1  # moved one step from the start, not re-initialised


def test_measure_prior_scores_its_own_world():
    import math

    from indomain.world.prior import emoji_prior_dir, measure_prior

    scores = measure_prior(emoji_prior_dir(), num_prompts=4, steps=2, batch_size=4)
    assert scores["num_prompts"] == 4 and 0 <= scores["control_top1"] <= 1
    assert math.isfinite(scores["fd_prior_styles"]) and scores["fd_prior_styles"] > 0


def test_mixture_stats_are_those_of_the_pooled_set():
    from indomain.world.prior import mixture_stats

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 4, generator=gen, dtype=torch.float64) + 1
    b = 2 * torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    mean, cov = mixture_stats([a, b], torch.tensor([0.75, 0.25], dtype=torch.float64))
    pooled = torch.cat([a, b])
    torch.testing.assert_close(mean, pooled.mean(0))
    torch.testing.assert_close(cov, torch.cov(pooled.T), atol=5e-3, rtol=0)


def test_prior_ceiling_scores_real_renders_and_the_matched_fd_forgives_a_style_preference():
    from indomain.world.prior import real_prior_world, score_prior_world
    from indomain.world.render import evenly_spaced, list_emoji

    images, names = real_prior_world(40)
    assert names == [e.name for e in evenly_spaced(list_emoji(), 40)]
    assert all(im.size == (32, 32) for im in images)
    noto = score_prior_world(images[::2], names[::2])  # the Noto half only: one style, real renders
    assert noto["control_top1"] >= 0.9 and noto["noto_share"] >= 0.8
    assert noto["fd_prior_styles_matched"] < noto["fd_prior_styles"]


@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("tpu", "not a device"),
                                             ("meta", "only the CPU and CUDA")])
def test_train_prior_refuses_a_device_it_cannot_use_before_any_work(tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    rc = main(["world", "train-prior", "--out", str(out), "--device", device, "--limit", "2"])
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()
