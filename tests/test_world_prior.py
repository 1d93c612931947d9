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
