import json

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

from indomain import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.safeload import UnsafeCheckpointError
from indomain.testing import save_tiny_prior, tiny_unet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def domain(components, null_embedding):
    # A domain model that differs from the prior, so domain guidance visibly changes samples.
    unet = tiny_unet(seed=3)
    return NullTextUNet.from_prior(unet, null_embedding, scheduler=components["scheduler"])


@pytest.fixture
def pipe(components, domain):
    p = InDomainPipeline(**components, domain_unet=domain)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_domain_weight_zero_reproduces_stable_diffusion(components, pipe, scheduler_cls):
    scheduler = scheduler_cls.from_config(components["scheduler"].config)
    sd = StableDiffusionPipeline(**{**components, "scheduler": scheduler}, safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler
    kw = dict(num_inference_steps=4, guidance_scale=5.0, output_type="np")
    ref = sd(["a red apple", "a dog"], negative_prompt=["blurry", ""], generator=gen(0), **kw).images
    out = pipe(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=0, generator=gen(0), **kw).images
    assert abs(ref - out).max() <= 1e-5
    # and the domain term really changes the result when switched on
    out_d = pipe(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=2.0, generator=gen(0), **kw).images
    assert abs(ref - out_d).max() > 1e-3


def test_domain_weight_one_equals_domain_model_alone(pipe, domain):
    latents = torch.randn(2, 4, 16, 16, generator=gen(4))
    out = pipe(domain_guidance_scale=1.0, guidance_scale=0.0, num_images_per_prompt=2, num_inference_steps=4,
               latents=latents.clone(), output_type="latent").images
    # sample with the domain model alone, step by step
    sched = pipe.scheduler
    sched.set_timesteps(4)
    x = latents * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(domain(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert torch.equal(out, x)


def test_batch_of_three_equals_three_single_runs(pipe):
    prompts = ["a cat", "a car", "a tree"]
    kw = dict(num_inference_steps=3, guidance_scale=2.5, domain_guidance_scale=2.5, output_type="np")
    batch = pipe(prompts, generator=[gen(s) for s in (1, 2, 3)], **kw).images
    singles = [pipe(p, generator=gen(s), **kw).images[0] for p, s in zip(prompts, (1, 2, 3))]
    for b, s in zip(batch, singles):
        assert abs(b - s).max() <= 1e-5


def test_num_images_per_prompt_and_unconditional(pipe):
    out = pipe(num_images_per_prompt=3, num_inference_steps=2, generator=gen(0), output_type="np").images
    assert out.shape == (3, 32, 32, 3) and 0 <= out.min() and out.max() <= 1
    assert abs(out[0] - out[1]).max() > 1e-3  # different noise per image
    out = pipe(["a", "b"], num_images_per_prompt=2, num_inference_steps=2, generator=gen(0), output_type="pil").images
    assert len(out) == 4 and out[0].size == (32, 32)


def test_prior_and_domain_are_two_unet_calls_per_step(pipe):
    calls = {"unet": [], "domain": []}
    pipe.unet.register_forward_pre_hook(lambda m, a: calls["unet"].append(a[0].shape[0]))
    pipe.domain_unet.register_forward_pre_hook(lambda m, a: calls["domain"].append(a[0].shape[0]))
    pipe(["a", "b"], weighted_prompts=[("c", -1.0), ("d", 0.5)], num_inference_steps=3, output_type="latent")
    assert calls["unet"] == [2 * 4] * 3  # ∅, prompt and 2 weighted prompts in one batch
    assert calls["domain"] == [2] * 3


def test_weighted_prompts_follow_gcfg(components, pipe):
    """Extra prompts are GCFG terms: (c, w) then (c, -w) move the result symmetrically around no term."""
    kw = dict(domain_guidance_scale=0.0, num_inference_steps=1, output_type="latent")
    lat = torch.randn(1, 4, 16, 16, generator=gen(0))
    base = pipe("a", latents=lat.clone(), **kw).images
    plus = pipe("a", weighted_prompts=[("b", 1.5)], latents=lat.clone(), **kw).images
    minus = pipe("a", weighted_prompts=[("b", -1.5)], latents=lat.clone(), **kw).images
    assert (plus - base).abs().max() > 1e-4
    torch.testing.assert_close(plus - base, base - minus, rtol=1e-4, atol=1e-5)


def test_callback_reads_and_changes_latents(pipe):
    seen = []

    def cb(p, i, t, kw):
        seen.append(kw["latents"].clone())
        return {"latents": torch.zeros_like(kw["latents"])} if i == 1 else {}

    out = pipe(num_inference_steps=2, callback_on_step_end=cb, generator=gen(0), output_type="latent").images
    assert len(seen) == 2 and torch.equal(out, torch.zeros_like(out))


def test_save_load_roundtrip(pipe, tmp_path):
    kw = dict(num_inference_steps=2, output_type="np")
    ref = pipe("a cat", generator=gen(0), **kw).images
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "domain_unet" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["domain_unet"][1] == "NullTextUNet"
    loaded = InDomainPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert abs(loaded("a cat", generator=gen(0), **kw).images - ref).max() <= 1e-6


def test_from_pretrained_prior_dir_plus_domain_dir(domain, tmp_path):
    prior = save_tiny_prior(tmp_path / "prior")
    domain.save_pretrained(tmp_path / "domain")
    pipe = InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "domain")
    assert isinstance(pipe.domain_unet, NullTextUNet)
    assert set(pipe.components) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "domain_unet",
                                    "controlnet", "adapter", "extra_domains", "control_unet", "image_encoder",
                                    "feature_extractor", "unconditional_student"}  # optional (None here)
    assert pipe.controlnet is None and pipe.adapter is None and pipe.extra_domains is None and pipe.control_unet is None
    assert pipe.unconditional_student is None
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_domain_dir_that_is_not_a_model(tmp_path):
    prior = save_tiny_prior(tmp_path / "prior")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a model folder"):
        InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "junk")
    with pytest.raises(ValueError, match="'AutoencoderKL', not a NullTextUNet"):
        InDomainPipeline.from_pretrained(prior, domain_unet=prior / "vae")


def test_mismatched_domain_model_is_refused(components, null_embedding):
    other = NullTextUNet.from_prior(tiny_unet(block_out_channels=(32, 32)), null_embedding)
    with pytest.raises(ValueError, match="block_out_channels"):
        InDomainPipeline(**components, domain_unet=other)
    v_domain = NullTextUNet.from_prior(components["unet"], null_embedding, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="v_prediction"):
        InDomainPipeline(**components, domain_unet=v_domain)


def test_missing_prior_component_is_named(tmp_path):
    import shutil

    prior = save_tiny_prior(tmp_path / "prior")
    shutil.rmtree(prior / "vae")
    with pytest.raises((ValueError, OSError), match="vae"):
        InDomainPipeline.from_pretrained(prior)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(pipe, bad):
    with pytest.raises(ValueError, match="domain_guidance_scale must be a finite"):
        pipe(domain_guidance_scale=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="guidance_scale must be a finite"):
        pipe("a", guidance_scale=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"weighted_prompts\[0\] weight must be a finite"):
        pipe(weighted_prompts=[("a", bad)], num_inference_steps=1)


def test_domain_weight_without_domain_model(components):
    pipe = InDomainPipeline(**components)
    with pytest.raises(ValueError, match="needs a domain model"):
        pipe(domain_guidance_scale=2.0, num_inference_steps=1)


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path, domain):
    domain.save_pretrained(tmp_path / "domain", safe_serialization=False)
    prior = save_tiny_prior(tmp_path / "prior")
    with pytest.raises(UnsafeCheckpointError, match="indomain convert"):
        InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "domain")
    pipe = InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "domain", allow_pickle=True)
    assert isinstance(pipe.domain_unet, NullTextUNet)
    with pytest.raises(ValueError, match="trust_remote_code"):
        InDomainPipeline.from_pretrained(prior, trust_remote_code=True)


def test_copied_diffusers_helpers_match_the_original():
    """pipeline.py copies two helpers rather than import diffusers' SD pipeline module (and its image-processor
    warnings); a diffusers upgrade that changes them shows here."""
    import inspect

    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion as sd

    from indomain import pipeline

    for name in ("rescale_noise_cfg", "retrieve_timesteps"):
        assert inspect.getsource(getattr(pipeline, name)) == inspect.getsource(getattr(sd, name)), name


def test_the_sampler_bar_is_labelled(components, capfd):
    pipe = InDomainPipeline(**components)
    pipe(num_inference_steps=2, domain_guidance_scale=0, output_type="latent")
    assert "sampling" in capfd.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=2, domain_guidance_scale=0, output_type="latent")
    assert capfd.readouterr().err == ""
