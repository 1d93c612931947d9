import numpy as np
import torch

from indomain.demo import run_demo
from indomain.pipeline import InDomainPipeline
from indomain.world.prior import emoji_prior_dir


def test_shipped_prior_loads_and_draws_the_prompted_emoji(tmp_path):
    prior = emoji_prior_dir(tmp_path / "cache")
    pipe = InDomainPipeline.from_pretrained(prior)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["red apple", "red apple", "dog face"], domain_guidance_scale=0, guidance_scale=5.0,
                  num_inference_steps=10, generator=[torch.Generator().manual_seed(i) for i in range(3)],
                  output_type="np").images
    assert images.shape == (3, 32, 32, 3)
    red = lambda im: im[..., 0].mean() - im[..., 1].mean()  # noqa: E731
    assert red(images[0]) > 0.1 and red(images[1]) > 0.1  # an apple is red
    assert abs(images[0] - images[1]).max() > 0.05  # different seeds, different apples


def test_shortened_demo_run_completes(tmp_path, monkeypatch):
    """The demo end to end on the shipped prior with 2 steps everywhere."""
    monkeypatch.setenv("INDOMAIN_CACHE", str(tmp_path / "cache"))
    index = run_demo(tmp_path / "demo", train_steps=2, num_prompts=2, images_per_setting=2, sample_steps=2, seed=0,
                     num_domain_images=16)
    out = index.parent
    assert index.is_file() and (out / "overview.png").is_file()
    text = (out / "RESULTS.md").read_text()
    for column in ["control_top1", "openmoji_share", "fd_openmoji"]:
        assert column in text
    assert (out / "eval-held-out-seed0" / "report.html").is_file() and (out / "tradeoff-held-out.png").is_file()
    assert "Smoke run" in text and "Smoke run" in index.read_text()  # its numbers say what they are
    # the default form (domain-text, issue #24) is scored and pictured beside the paper's Eq. A
    assert "| ours-dt |" in text and "| ours |" in text and "the default: domain-text" in index.read_text()
    assert np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "overview.png")).std() > 10
