from indomain.testing import save_tiny_prior
from indomain.world.benchmark import BenchmarkConfig, run_benchmark


def test_shortened_benchmark_trains_every_method_and_writes_results(tmp_path):
    """The harness end to end on a tiny random prior; the scorer reports each batch's mean brightness."""
    import numpy as np

    prior = save_tiny_prior(tmp_path / "prior")
    seen_prompts = []

    def scorer(images, prompts):
        seen_prompts.extend(prompts)
        return {"brightness": float(np.mean([np.asarray(im).mean() for im in images]))}

    config = BenchmarkConfig(prior=str(prior), out=str(tmp_path / "bench"), train_steps=2, train_batch_size=4,
                             num_domain_images=8, num_prompts=2, images_per_setting=2, sample_steps=2,
                             domain_scales=[0.0, 2.5], guidance_scales=[2.5])
    out = run_benchmark(config, scorer=scorer)
    for name in ["ours", "finetune", "finetune-lora"]:
        assert (out / name / "config.json").is_file(), name
    text = (out / "RESULTS.md").read_text()
    assert "## seen prompts" in text and "## held-out prompts" in text
    for method in ["prior", "finetune-cfg", "finetune-lora-cfg", "rectified", "ours"]:
        assert f"| {method} |" in text
    assert (out / "eval-held-out" / "report.html").is_file()
    # the scorer sees the bare emoji names, not the fine-tune's captioned prompts
    assert seen_prompts and not any(p.startswith("openmoji style") for p in seen_prompts)
