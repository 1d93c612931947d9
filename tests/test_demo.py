from indomain.demo import run_demo
from indomain.testing import save_tiny_prior


def test_shortened_demo_run_completes(tmp_path):
    """The demo end to end with a tiny random prior in place of the shipped emoji prior (2 steps everywhere)."""
    prior = save_tiny_prior(tmp_path / "prior")
    index = run_demo(tmp_path / "demo", train_steps=2, num_prompts=2, images_per_setting=2, sample_steps=2, seed=0,
                     prior=str(prior))
    out = index.parent
    assert index.is_file() and (out / "overview.png").is_file()
    text = (out / "RESULTS.md").read_text()
    for column in ["control_top1", "openmoji_share", "fd_openmoji"]:
        assert column in text
    assert (out / "eval-held-out" / "report.html").is_file()
