"""`indomain train` for diffusers users: diffusers' flag names, a model card a Hub reader expects, --push-to-hub."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from indomain.cli import build_parser, main
from indomain.cliargs import from_args
from indomain.testing import save_tiny_prior
from indomain.train import TrainConfig, hub_base_model, hub_upload_plan, train, train_command


def parse(argv):
    return from_args(TrainConfig, build_parser(["train"]).parse_args(["train", *argv]))


def test_diffusers_flag_names_give_the_same_config():
    ours = parse(["--prior", "p", "--images", "d", "--output", "o", "--train-batch-size", "3", "--max-train-steps", "7",
                  "--learning-rate", "1e-4", "--mixed-precision", "fp16", "--checkpointing-steps", "5",
                  "--resume", "latest", "--lora-rank", "4", "--validation-prompts", "a cat", "a dog", "--no-flip",
                  "--gradient-checkpointing"])
    theirs = parse(["--pretrained_model_name_or_path", "p", "--train_data_dir", "d", "--output_dir", "o",
                    "--train_batch_size", "3", "--max_train_steps", "7", "--learning_rate", "1e-4",
                    "--mixed_precision", "fp16", "--checkpointing_steps", "5", "--resume_from_checkpoint", "latest",
                    "--rank", "4", "--validation_prompts", "a cat", "a dog", "--no_flip", "--gradient_checkpointing",
                    "--use_ema", "--center_crop"])  # diffusers' on-switches: already our defaults
    assert dataclasses.asdict(theirs) == dataclasses.asdict(ours)
    assert "--train_batch_size" not in build_parser(["train"]).format_help().split("diffusers' flag names")[0]  # hidden


def test_a_missing_prior_names_both_spellings(tmp_path, capsys):
    assert main(["train", "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "--prior (or diffusers' --pretrained_model_name_or_path)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--push-to-hub"):
        TrainConfig(prior="p", images="d", output="o", hub_model_id="me/x").validate()


def test_base_model_is_a_hub_id_or_nothing(tmp_path):
    assert hub_base_model("stable-diffusion-v1-5/stable-diffusion-v1-5") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert hub_base_model(str(tmp_path)) is None and hub_base_model("./sd15") is None


def test_model_card_and_what_push_to_hub_would_upload(tmp_path, monkeypatch):
    import huggingface_hub

    prior = save_tiny_prior(tmp_path / "prior")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    calls = {}

    class Repo:
        repo_id = "me/emoji-domain"

    def create_repo(self, repo_id, **kw):  # offline: record instead of calling the Hub
        calls["create"] = repo_id
        return Repo()

    def upload_folder(self, **kw):
        calls["upload"] = kw

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    config = TrainConfig(prior=str(prior), images=str(images), output=str(tmp_path / "run"), resolution=32,
                         train_batch_size=2, max_train_steps=2, checkpointing_steps=1, validation_steps=2,
                         validation_prompts=["a cat"], num_validation_images=1, validation_inference_steps=1,
                         push_to_hub=True, hub_model_id="me/emoji-domain")
    out = train(config)
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "base_model" not in front  # a local prior: no path on the Hub
    assert "library_name: diffusers" in front
    assert "## Training command" in card and train_command(config) in card
    assert train_command(config).startswith("indomain train --prior ") and "--push-to-hub" in train_command(config)
    assert "## Samples" in card and "](samples/step0000002_uncond.png)" in card
    assert 'domain_unet="me/emoji-domain"' in card  # the Use snippet names the Hub repository
    assert calls["create"] == "me/emoji-domain" and calls["upload"]["repo_id"] == "me/emoji-domain"
    uploaded = calls["upload"]["allow_patterns"]
    assert uploaded == hub_upload_plan(out)
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors", "train_config.json",
            "samples/step0000002_uncond.png"} <= set(uploaded)
    assert not [f for f in uploaded if f.startswith(("checkpoint-", "latent_cache", ".")) or "/." in f]
    assert (out / "checkpoint-1").is_dir() and (out / "latent_cache").exists()  # they exist, and stay local
