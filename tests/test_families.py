"""More priors (issue #12): SD 2.x v-prediction, SDXL and SD3, each on tiny configs: detection, the null-text
conversion, w_d = 0 equals the diffusers pipeline, training a few steps, save and load, generate."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline,
)
from PIL import Image

from indomain import InDomainAutoPipeline, InDomainSD3Pipeline, InDomainXLPipeline, NullTextTransformer, NullTextUNet
from indomain.cli import main
from indomain.families import SD, SD3, SDXL, call_denoiser, denoiser_inputs, detect_family, family_of
from indomain.loading import load_domain_model
from indomain.pipeline import InDomainPipeline
from indomain.safeload import check_prior
from indomain.schedulers import make_scheduler
from indomain.testing import save_tiny_prior, tiny_sd3_components, tiny_sdxl_components
from indomain.train import LatentBatches, TrainConfig, build_latent_cache, train


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 36), (32, 48), (36, 36), (64, 40)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {name: save_tiny_prior(root / name, family=name) for name in ("sd", "sdxl", "sd3")}


# -- detection and checks -------------------------------------------------------------------------------------


def test_family_is_read_from_model_index(priors):
    assert [detect_family(priors[n]) for n in ("sd", "sdxl", "sd3")] == [SD, SDXL, SD3]
    # by class name, else by components (a renamed pipeline class still works)
    assert family_of({"_class_name": "MyXL", "unet": [], "text_encoder_2": []}) is SDXL
    assert family_of({"_class_name": "X", "transformer": [], "text_encoder_2": [], "text_encoder_3": []}) is SD3
    with pytest.raises(ValueError, match="transformer prior that is not Stable Diffusion 3"):
        family_of({"_class_name": "FluxPipeline", "transformer": [], "text_encoder_2": []})
    with pytest.raises(ValueError, match="neither a unet nor a transformer"):
        family_of({"_class_name": "Whatever"})


def test_check_prior_asks_for_the_components_of_the_family(priors, tmp_path):
    for name in ("sdxl", "sd3"):
        check_prior(priors[name])
    import shutil

    broken = shutil.copytree(priors["sd3"], tmp_path / "sd3")
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ValueError, match="transformer"):
        check_prior(broken)
    broken = shutil.copytree(priors["sdxl"], tmp_path / "sdxl")
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ValueError, match="text_encoder_2"):
        check_prior(broken)


def test_a_pipeline_class_refuses_another_family_and_auto_picks_the_right_one(priors):
    with pytest.raises(ValueError, match="is a Stable Diffusion XL prior.*InDomainAutoPipeline"):
        InDomainPipeline.from_pretrained(priors["sdxl"])
    with pytest.raises(ValueError, match="is a Stable Diffusion 1.x / 2.x prior"):
        InDomainSD3Pipeline.from_pretrained(priors["sd"])
    kinds = [type(InDomainAutoPipeline.from_pretrained(priors[n])).__name__ for n in ("sd", "sdxl", "sd3")]
    assert kinds == ["InDomainPipeline", "InDomainXLPipeline", "InDomainSD3Pipeline"]


def test_schedulers_fit_the_objective():
    flow = tiny_sd3_components()["scheduler"].config
    ddim = DDIMScheduler().config
    assert type(make_scheduler("auto", flow)).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert type(make_scheduler("auto", ddim)).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="flow-matching prior"):
        make_scheduler("dpm++", flow)
    with pytest.raises(ValueError, match="flow-euler is for SD3"):
        make_scheduler("flow-euler", ddim)


# -- the denoiser call: one home for sampling, training and distillation (issue #23) ------------------------------


def test_denoiser_inputs_of_each_family():
    text, pooled, ids = torch.zeros(2, 77, 32), torch.zeros(2, 32), torch.tensor([[32.0, 32, 0, 0, 32, 32]])
    assert denoiser_inputs(SD, text, 2) == {"encoder_hidden_states": text}
    assert denoiser_inputs(SD, None, 2, ids) == {"encoder_hidden_states": None}  # no size conditioning
    xl = denoiser_inputs(SDXL, {"text": text, "pooled": pooled}, 2, ids)
    assert xl["encoder_hidden_states"] is text and xl["added_cond_kwargs"]["text_embeds"] is pooled
    assert xl["added_cond_kwargs"]["time_ids"].shape == (2, 6)
    assert set(denoiser_inputs(SDXL, None, 2, ids)["added_cond_kwargs"]) == {"time_ids"}  # a domain model: no text
    with pytest.raises(ValueError, match="time_ids"):
        denoiser_inputs(SDXL, {"text": text, "pooled": pooled}, 2)
    assert denoiser_inputs(SD3, {"text": text, "pooled": pooled}, 2) == {"encoder_hidden_states": text,
                                                                        "pooled_projections": pooled}
    assert denoiser_inputs(SD3, None, 2) == {}
    with pytest.raises(ValueError, match="spatial control"):
        call_denoiser(SD3, None, torch.zeros(1), torch.zeros(1), {}, {"down_block_additional_residuals": ()})


def test_no_caller_builds_a_denoiser_call_of_its_own():
    """The pipelines, training, distillation, the student, editing and SDS call a denoiser only through
    `families.call_denoiser` with `families.denoiser_inputs`: a new family's call convention is one branch there."""
    import re
    from pathlib import Path

    import indomain

    src = Path(indomain.__file__).parent
    call = re.compile(r"\b(added_cond_kwargs|pooled_projections|encoder_hidden_states|hidden_states|class_labels)=")
    for name in ("pipeline", "pipeline_xl", "pipeline_sd3", "train", "distill", "student", "editing", "sds"):
        found = [line.strip() for line in (src / f"{name}.py").read_text().splitlines() if call.search(line)]
        assert not found, f"{name}.py builds a denoiser call itself: {found}"


# -- SD 2.x: v-prediction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_combining_in_eps_space_or_v_space_gives_the_same_update(name):
    """guidance.py's argument: Eq. C is affine with weights summing to 1, and eps and v are affine in x0 at fixed x_t."""
    eps_sched = make_scheduler(name, DDIMScheduler(prediction_type="epsilon").config)
    v_sched = make_scheduler(name, DDIMScheduler(prediction_type="v_prediction").config)
    for s in (eps_sched, v_sched):
        s.set_timesteps(10)
    t = eps_sched.timesteps[3]
    a = eps_sched.alphas_cumprod[t]
    x = torch.randn(2, 4, 8, 8, generator=gen(1))
    eps = [torch.randn(2, 4, 8, 8, generator=gen(k)) for k in (2, 3, 4)]  # eps_u, eps_domain, eps_control
    to_v = lambda e: a.sqrt() * e - (1 - a).sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt()  # noqa: E731
    w_d, w_c = 2.5, 4.0

    def combine(u, d, c):
        return u + w_d * (d - u) + w_c * (c - u)

    for s in (eps_sched, v_sched):
        s._step_index = None
    prev_eps = eps_sched.step(combine(*eps), t, x).prev_sample
    prev_v = v_sched.step(combine(*map(to_v, eps)), t, x).prev_sample
    assert torch.allclose(prev_eps, prev_v, atol=1e-5)
    assert not torch.allclose(prev_eps, x, atol=1e-3)


def test_v_prediction_prior_trains_a_v_model_and_equals_diffusers_at_w_d_0(tmp_path, images):
    from indomain.testing import tiny_sd_components

    components = tiny_sd_components(tmp_path / "tok")
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config, prediction_type="v_prediction")
    sd = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp_path / "prior")
    out = train(TrainConfig(prior=str(tmp_path / "prior"), images=str(images), output=str(tmp_path / "run"),
                            resolution=32, train_batch_size=2, max_train_steps=2, checkpointing_steps=2))
    domain = load_domain_model(out)
    assert domain.config.prediction_type == "v_prediction"
    ours = InDomainPipeline(**components, domain_unet=domain)
    for p in (ours, sd):
        p.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", num_inference_steps=3, guidance_scale=4.0, output_type="np")
    assert np.abs(ours(**kw, domain_guidance_scale=0.0, generator=gen()).images - sd(**kw, generator=gen()).images).max() == 0
    assert np.isfinite(ours(**kw, generator=gen()).images).all()


# -- SDXL ---------------------------------------------------------------------------------------------------------


SDXL_CASES = {
    "plain": {"prompt": ["a cat", "a dog"]},
    "negative-and-two-per-prompt": {"prompt": "a cat", "negative_prompt": "blurry", "num_images_per_prompt": 2},
    "size-conditioning": {"prompt": "a cat", "original_size": (64, 48), "crops_coords_top_left": (8, 0),
                          "target_size": (32, 32)},
    "guidance-rescale": {"prompt": "a cat", "guidance_rescale": 0.7},
}


@pytest.mark.parametrize("case", SDXL_CASES)
def test_sdxl_at_domain_weight_0_equals_stable_diffusion_xl(tmp_path, case):
    components = tiny_sdxl_components(tmp_path / "tok")
    ref = StableDiffusionXLPipeline(**components, add_watermarker=False)
    ours = InDomainXLPipeline(**components)
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, guidance_scale=5.0, output_type="np", **SDXL_CASES[case])
    a = ref(**kw, generator=gen()).images
    b = ours(**kw, domain_guidance_scale=0.0, generator=gen()).images
    assert np.abs(a - b).max() <= 1e-6


def test_sdxl_null_text_model_converts_saves_and_loads(tmp_path):
    components = tiny_sdxl_components(tmp_path / "tok")
    pipe = InDomainXLPipeline(**components)
    null = pipe.encode_negative(None, 1, "cpu")
    assert not null["text"].any() and not null["pooled"].any()  # force_zeros_for_empty_prompt: ∅ is all zeros
    model = NullTextUNet.from_prior(components["unet"], null["text"], null_pooled=null["pooled"])
    model.save_pretrained(tmp_path / "dom")
    loaded = load_domain_model(tmp_path / "dom")
    x, t = torch.randn(2, 4, 16, 16, generator=gen(1)), torch.tensor(400)
    added = {"time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        ref = components["unet"](x, t, encoder_hidden_states=torch.zeros(2, 77, 64),
                                 added_cond_kwargs={**added, "text_embeds": torch.zeros(2, 32)}).sample
        assert torch.equal(loaded(x, t, added_cond_kwargs=added).sample, ref)  # exact: ∅ is zeros
    with pytest.raises(ValueError, match="does not fit the prior"):
        InDomainPipeline(**tiny_sd_like(tmp_path), domain_unet=loaded)


def tiny_sd_like(tmp_path):
    from indomain.testing import tiny_sd_components

    return tiny_sd_components(tmp_path / "tok-sd")


def test_latent_batches_carry_sdxl_size_conditioning(tmp_path, images):
    from indomain.testing import tiny_vae

    config = TrainConfig(prior="unused", images=str(images), output=str(tmp_path), resolution=32, train_batch_size=4,
                         center_crop=False, random_flip=False)
    paths = sorted(images.glob("*.png"))
    cache = build_latent_cache(paths, tiny_vae(), config, tmp_path / "latents", "tiny", "cpu")
    batches = LatentBatches(cache, len(paths), config, 16, 0.18215, vae_factor=2)
    batches.get(0, 0, 0, 1)
    ids = batches.time_ids
    sizes = {tuple(Image.open(p).size[::-1]) for p in paths}
    assert ids.shape == (4, 6) and {tuple(int(v) for v in row[:2]) for row in ids} == sizes
    assert (ids[:, 4:] == 32).all()  # target size
    assert (ids[:, 2:4] % 2 == 0).all() and ids[:, 2:4].max() > 0  # random crops, in pixels


def test_sdxl_train_save_load_generate(priors, images, tmp_path):
    out = train(TrainConfig(prior=str(priors["sdxl"]), images=str(images), output=str(tmp_path / "run"), resolution=32,
                            train_batch_size=2, max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                            num_validation_images=1, validation_inference_steps=2))
    assert (out / "samples" / "step0000002_uncond.png").is_file()
    pipe = InDomainAutoPipeline.from_pretrained(priors["sdxl"], domain_unet=out)
    assert isinstance(pipe, InDomainXLPipeline) and pipe.domain_unet.config.pooled_dim == 32
    rc = main(["generate", "--prior", str(priors["sdxl"]), "--domain", str(out), "--prompt", "a cat", "--steps", "2",
               "--num-images", "2", "--out", str(tmp_path / "gen"), "--device", "cpu"])
    assert rc == 0
    settings = json.loads((tmp_path / "gen" / "settings.json").read_text())
    assert settings["resolved"]["domain_config"]["pooled_dim"] == 32
    assert len(list((tmp_path / "gen").glob("*.png"))) >= 2


# -- SD3 ----------------------------------------------------------------------------------------------------------


SD3_CASES = {
    "plain": {"prompt": ["a cat", "a dog"]},
    "negative-and-two-per-prompt": {"prompt": "a cat", "negative_prompt": "blurry", "num_images_per_prompt": 2},
    "guidance-7": {"prompt": "a cat", "guidance_scale": 7.0},
}


@pytest.mark.parametrize("case", SD3_CASES)
def test_sd3_at_domain_weight_0_equals_stable_diffusion_3(tmp_path, case):
    components = tiny_sd3_components(tmp_path / "tok")
    ref = StableDiffusion3Pipeline(**components)
    ours = InDomainSD3Pipeline(**components)
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, output_type="np", **SD3_CASES[case])
    kw.setdefault("guidance_scale", 4.0)
    a = ref(**kw, generator=gen()).images
    b = ours(**kw, domain_guidance_scale=0.0, generator=gen()).images
    assert np.abs(a - b).max() <= 1e-6


def test_sd3_null_text_transformer_is_the_prior_fed_the_empty_prompt(tmp_path):
    components = tiny_sd3_components(tmp_path / "tok")
    pipe = InDomainSD3Pipeline(**components)
    null = pipe.encode_negative(None, 1, "cpu")
    assert null["text"].shape == (1, 77 + 256, 64) and null["pooled"].shape == (1, 64)
    model = NullTextTransformer.from_prior(components["transformer"], null["text"], null["pooled"])
    model.save_pretrained(tmp_path / "dom")
    loaded = load_domain_model(tmp_path / "dom")
    x, t = torch.randn(2, 4, 16, 16, generator=gen(1)), torch.tensor([500.0, 500.0])
    text = pipe.encode_text(["a cat", "a dog"], "cpu")
    with torch.no_grad():
        ref = components["transformer"](hidden_states=x, timestep=t, encoder_hidden_states=null["text"].expand(2, -1, -1),
                                        pooled_projections=null["pooled"].expand(2, -1)).sample
        # any text given is ignored
        out = loaded(x, t, encoder_hidden_states=text["text"], pooled_projections=text["pooled"]).sample
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="only mode='exact'"):
        NullTextTransformer.from_prior(components["transformer"], null["text"], null["pooled"], mode="constant")


def test_sd3_train_save_load_generate_evaluate(priors, images, tmp_path):
    with pytest.raises(ValueError, match="--snr-gamma"):
        train(TrainConfig(prior=str(priors["sd3"]), images=str(images), output=str(tmp_path / "snr"), resolution=32,
                          snr_gamma=5.0))
    out = train(TrainConfig(prior=str(priors["sd3"]), images=str(images), output=str(tmp_path / "run"), resolution=32,
                            train_batch_size=2, max_train_steps=2, checkpointing_steps=2, validation_steps=2,
                            num_validation_images=1, validation_inference_steps=2))
    model = load_domain_model(out)
    assert isinstance(model, NullTextTransformer) and model.config.prediction_type == "flow"
    pipe = InDomainAutoPipeline.from_pretrained(priors["sd3"], domain_unet=out)
    assert isinstance(pipe, InDomainSD3Pipeline)
    pipe.set_progress_bar_config(disable=True)
    assert np.isfinite(pipe("a cat", num_inference_steps=2, output_type="np").images).all()
    rc = main(["generate", "--prior", str(priors["sd3"]), "--domain", str(out), "--prompt", "a cat", "--steps", "2",
               "--out", str(tmp_path / "gen"), "--device", "cpu"])
    assert rc == 0
    assert main(["generate", "--prior", str(priors["sd3"]), "--domain", str(out), "--scheduler", "ddim",
                 "--out", str(tmp_path / "gen2"), "--device", "cpu"]) == 2
    assert not (tmp_path / "gen2").exists()  # refused before anything was written


@pytest.mark.parametrize("name", ["sdxl", "sd3"])
def test_evaluate_opens_every_family(priors, images, tmp_path, name):
    """`indomain evaluate` generates and scores a weight sweep on an SDXL / SD3 prior (FID/KID against a folder)."""
    from indomain import evaluate as E

    pipe = InDomainAutoPipeline.from_pretrained(priors[name])
    null = pipe.encode_negative(None, 1, "cpu")
    if name == "sd3":
        model = NullTextTransformer.from_prior(pipe.transformer, null["text"], null["pooled"])
    else:
        model = NullTextUNet.from_prior(pipe.unet, null["text"], null_pooled=null["pooled"])
    model.save_pretrained(tmp_path / "domain")
    config = E.EvalConfig(out=tmp_path / "ev", num_images=4, prompts=["a cat", "a dog"], steps=2, batch_size=4,
                          kid_subset_size=4, kid_subsets=4, resolution=32, use_stats_cache=False, real=images)
    from indomain.metrics import RandomConvFeatures

    result = E.evaluate(E.Method("ours", priors[name], domain=tmp_path / "domain"), E.Sweep([0, 2.5], [2.5]), config,
                        extractor=RandomConvFeatures(0))
    assert [row["w_d"] for row in result.rows] == [0, 2.5]
    assert all(np.isfinite(row["fid"]) for row in result.rows)
    pipe = E.load_method(E.Method("ours", priors[name], domain=tmp_path / "domain"), config, torch.device("cpu"))
    expected = {"sdxl": "DPMSolverMultistepScheduler", "sd3": "FlowMatchEulerDiscreteScheduler"}[name]
    assert type(pipe.scheduler).__name__ == expected  # --scheduler auto
