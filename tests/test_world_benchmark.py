import math

import pytest
from PIL import Image

from indomain.testing import save_tiny_prior
from indomain.world.benchmark import (
    REAL,
    ROUND_TRIP,
    BenchmarkConfig,
    aggregate_seeds,
    pareto_front,
    plot_tradeoff,
    run_benchmark,
)


def test_defaults_follow_the_protocol_and_the_demo_is_a_smoke_run():
    config = BenchmarkConfig(prior="p", out="o")
    assert config.images_per_setting >= 96 and len(set(config.seeds)) >= 2 and not config.smoke
    assert len([w for w in config.domain_guidance_scales if w > 0]) >= 2 and 0.0 in config.domain_guidance_scales  # a w_d sweep + prior
    assert len(config.guidance_scales) >= 2 and len(config.baseline_scales) >= 2
    demo = BenchmarkConfig.demo(prior="p", out="o")
    assert demo.smoke and demo.images_per_setting < config.images_per_setting


def _row(method, w_d, w_c, control, share, fd, n=100):
    return {"method": method, "w_d": w_d, "w_c": w_c, "setting": f"{method}_{w_d}_{w_c}", "n_generated": n,
            "control_top1": control, "openmoji_share": share, "fd_openmoji": fd, "images": "images/x"}


def test_seed_aggregation_means_binomial_se_and_fd_range():
    seed0 = [_row("ours", 2.5, 2.5, 0.5, 0.2, 10.0), _row("prior", 0.0, 2.5, 0.9, 0.0, 30.0)]
    seed1 = [_row("ours", 2.5, 2.5, 0.7, 0.4, 14.0), _row("prior", 0.0, 2.5, 0.8, 0.1, 29.0)]
    ours, prior = aggregate_seeds([seed0, seed1])
    assert (ours["method"], ours["w_d"], ours["w_c"], ours["seeds"], ours["n"]) == ("ours", 2.5, 2.5, 2, 200)
    assert ours["control_top1"] == pytest.approx(0.6)
    assert ours["control_top1_se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 200))  # N = images x seeds
    assert ours["openmoji_share_se"] == pytest.approx(math.sqrt(0.3 * 0.7 / 200))
    assert (ours["fd_openmoji"], ours["fd_openmoji_min"], ours["fd_openmoji_max"]) == pytest.approx((12.0, 10.0, 14.0))
    assert "fd_openmoji_se" not in ours and "control_top1_min" not in ours  # each kind of score its own error
    assert prior["control_top1"] == pytest.approx(0.85) and prior["fd_openmoji_min"] == 29.0
    single, = aggregate_seeds([[_row("prior", 0.0, 2.5, 0.0, 1.0, 5.0, n=24)]])
    assert single["n"] == 24 and single["control_top1_se"] == 0.0 and single["fd_openmoji_max"] == 5.0


def test_pareto_front_keeps_only_non_dominated_points():
    points = [(0.9, 10.0), (0.8, 8.0), (0.7, 12.0), (0.9, 11.0), (0.5, 8.0), (0.8, 8.0), (math.nan, 1.0), (0.3, 7.0)]
    # (0.7, 12) and (0.9, 11) and (0.5, 8) are dominated; equal points do not dominate each other; NaN never counts
    assert pareto_front(points) == [0, 1, 5, 7]
    assert pareto_front([]) == []


def test_tradeoff_plot_is_written_with_reference_points_and_front(tmp_path):
    rows = aggregate_seeds([[{**_row(REAL, None, None, 0.95, 0.97, 4.0), "n_generated": 96}]])
    rows += aggregate_seeds([
        [_row("prior", 0.0, 2.5, 0.9, 0.0, 30.0), _row("ours", 2.5, 2.5, 0.8, 0.6, 12.0),
         _row("ours", 2.5, 5.0, 0.85, 0.5, 15.0), _row("finetune-cfg", 0.0, 2.5, 0.4, 0.7, 14.0)],
        [_row("prior", 0.0, 2.5, 0.88, 0.0, 31.0), _row("ours", 2.5, 2.5, 0.78, 0.6, 13.0),
         _row("ours", 2.5, 5.0, 0.86, 0.5, 14.0), _row("finetune-cfg", 0.0, 2.5, 0.42, 0.7, 16.0)],
    ])
    path = plot_tradeoff(rows, [1, 2, 3], tmp_path / "tradeoff.png", "held-out prompts")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert plot_tradeoff([{"method": "x", "w_d": 0.0, "w_c": 1.0, "brightness": 0.5}], [], tmp_path / "none.png",
                         "t") is None and not (tmp_path / "none.png").exists()


def test_shortened_benchmark_trains_every_method_and_writes_results(tmp_path):
    """The harness end to end on a tiny random prior with two seeds; a stand-in scorer from each batch's brightness."""
    import numpy as np
    from PIL import Image

    prior = save_tiny_prior(tmp_path / "prior")
    seen_prompts = []

    def scorer(images, prompts):
        seen_prompts.extend(prompts)
        brightness = [np.asarray(im).mean() / 255 for im in images]
        return {"control_top1": float(np.mean([b > 0.5 for b in brightness])),
                "fd_openmoji": 10 * float(np.mean(brightness)), "brightness": float(np.mean(brightness))}

    config = BenchmarkConfig(prior=str(prior), out=str(tmp_path / "bench"), train_steps=2, train_batch_size=4,
                             num_domain_images=8, num_prompts=2, images_per_setting=4, seeds=[0, 1], sample_steps=2,
                             domain_guidance_scales=[0.0, 2.5], guidance_scales=[2.5], baseline_scales=[2.5])
    out = run_benchmark(config, scorer=scorer)
    for name in ["ours", "finetune", "finetune-lora"]:
        assert (out / name / "config.json").is_file(), name
    text = (out / "RESULTS.md").read_text()
    assert "## seen prompts" in text and "## held-out prompts" in text and "Smoke run" in text
    for method in ["prior", "finetune-cfg", "finetune-lora-cfg", "rectified", "ours", "ours-dt", REAL, ROUND_TRIP]:
        assert f"| {method} |" in text
    assert "| ours | 0 |" not in text and "| ours-dt | 0 |" not in text  # w_d = 0 is the prior: not generated twice
    assert " ± " in text and "FD reference: OpenMoji font renders" in text
    for split in ["seen", "held-out"]:
        assert (out / f"tradeoff-{split}.png").is_file() and f"](tradeoff-{split}.png)" in text
        for seed in [0, 1]:
            assert (out / f"eval-{split}-seed{seed}" / "report.html").is_file()
    # the two seeds draw different noise: different images of the same setting
    first = [np.asarray(Image.open(out / f"eval-seen-seed{s}/images/prior_wd0_wc2.5/000000.png")) for s in (0, 1)]
    assert np.abs(first[0].astype(int) - first[1].astype(int)).max() > 0
    # the scorer sees the bare emoji names, not the fine-tune's captioned prompts
    assert seen_prompts and not any(p.startswith("openmoji style") for p in seen_prompts)


def test_derived_domains_render_train_data_and_reference_rows(tmp_path):
    """A derived domain's renders are the training data and the real-render rows; the round trip goes through the VAE."""
    import numpy as np

    from indomain.world.benchmark import render_domain, score_real_renders
    from indomain.world.domains import get_domain
    from indomain.world.evaluators import DOMAIN_SPLIT_SEED
    from indomain.world.render import get_emoji, list_emoji, render, split_emoji

    folder, seen, held_out = render_domain(tmp_path, 32, 3, domain="sticker")
    files = sorted(folder.glob("*.png"))
    assert len(files) == 3 and not set(seen) & set(held_out)
    ev_seen, ev_held_out = split_emoji(list_emoji(), seed=DOMAIN_SPLIT_SEED)  # the evaluators' split, whatever --seed
    assert seen == [e.name for e in ev_seen] and held_out == [e.name for e in ev_held_out]
    sticker = np.asarray(Image.open(files[0]).convert("RGB"))
    assert (sticker[:4] == 255).all() and (sticker[:, -4:] == 255).all() and (sticker < 250).any()  # white margins
    emoji = get_emoji("red apple")
    sepia = np.asarray(get_domain("sepia").render(emoji)).reshape(-1, 3).astype(float)
    assert not np.array_equal(sepia, np.asarray(render(emoji, "twemoji", 32).convert("RGB")).reshape(-1, 3))
    ramp = sepia[:, 0] - 112.0  # on the brown-to-cream ramp: every channel a fixed affine function of the red one
    assert np.abs(66 + ramp * (247.35 - 66) / (255 - 112) - sepia[:, 1]).max() < 1.5
    with pytest.raises(ValueError, match="sepia"):
        get_domain("pixel")

    prior = save_tiny_prior(tmp_path / "prior")

    def scorer(images, prompts):
        return {"brightness": float(np.mean([np.asarray(im).mean() for im in images]))}

    real = score_real_renders(["red apple", "dog face"], 4, 32, scorer, "sepia")
    trip = score_real_renders(["red apple", "dog face"], 4, 32, scorer, "sepia", vae=str(prior / "vae"))
    assert real["method"] == REAL and trip["method"] == ROUND_TRIP and real["n_generated"] == 4
    assert real["brightness"] != trip["brightness"]  # a random tiny VAE changes the images
