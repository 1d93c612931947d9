"""Works the way a diffusers user expects (issue #10): call-signature parity with StableDiffusionPipeline at domain
weight 0, dtype everywhere, domain models from the hub cache, subfolders and variants."""

import shutil
import warnings

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from diffusers.callbacks import PipelineCallback, SDCFGCutoffCallback

from indomain import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.testing import save_tiny_prior, tiny_unet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def domain(components, null_embedding):
    return NullTextUNet.from_prior(tiny_unet(seed=3), null_embedding, scheduler=components["scheduler"])


@pytest.fixture
def pair(components, domain):
    """Our pipeline and diffusers' on the same components."""
    ours = InDomainPipeline(**components, domain_unet=domain)
    sd = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for p in (ours, sd):
        p.set_progress_bar_config(disable=True)
    return ours, sd


class ShiftLatents(PipelineCallback):
    """A diffusers callback that edits the latents after step 1."""

    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == 1:
            callback_kwargs["latents"] = callback_kwargs["latents"] * 0.9 + 0.05
        return callback_kwargs


def stop_after_two(pipe, i, t, kw):
    if i == 1:
        pipe._interrupt = True
    return kw


CASES = {
    "plain": {},
    "pipeline-callback": {"callback_on_step_end": ShiftLatents()},
    "interrupt": {"callback_on_step_end": stop_after_two, "output_type": "latent"},
    "timesteps": {"scheduler": DPMSolverMultistepScheduler, "timesteps": [999, 700, 400, 100]},
    "sigmas": {"scheduler": EulerDiscreteScheduler, "sigmas": [14.0, 5.0, 1.5, 0.3, 0.0]},
    "guidance-rescale": {"guidance_rescale": 0.7},
}


@pytest.mark.parametrize("case", CASES)
def test_domain_weight_zero_equals_stable_diffusion(pair, case):
    ours, sd = pair
    kw = dict(CASES[case])
    if "scheduler" in kw:
        scheduler = kw.pop("scheduler").from_config(ours.scheduler.config)
        ours.scheduler = sd.scheduler = scheduler
    steps = {} if "timesteps" in kw or "sigmas" in kw else {"num_inference_steps": 4}
    common = {"guidance_scale": 5.0, "output_type": "np", **steps, **kw}
    ref = sd(["a red apple", "a dog"], negative_prompt=["blurry", ""], generator=gen(0), **common).images
    out = ours(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=0, generator=gen(0),
               **common).images
    assert abs(torch.as_tensor(ref) - torch.as_tensor(out)).max() <= 1e-5
    if case != "plain":  # the argument really changes the result
        plain = ours(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=0, generator=gen(0),
                     guidance_scale=5.0, output_type=common["output_type"], num_inference_steps=4).images
        assert abs(torch.as_tensor(plain) - torch.as_tensor(out)).max() > 1e-4


def test_properties_during_a_call(pair):
    ours, _ = pair
    seen = []

    def look(pipe, i, t, kw):
        seen.append((pipe.num_timesteps, pipe.guidance_scale, pipe.domain_guidance_scale, pipe.interrupt))
        return kw

    ours("a cat", num_inference_steps=3, guidance_scale=4.0, domain_guidance_scale=1.5, callback_on_step_end=look)
    assert seen == [(3, 4.0, 1.5, False)] * 3


def test_cfg_cutoff_callback_turns_the_control_term_off_after_the_cutoff(pair):
    ours, _ = pair
    kw = dict(num_inference_steps=4, guidance_scale=4.0, domain_guidance_scale=1.5, output_type="latent")
    cut = ours("a cat", callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1), generator=gen(0), **kw).images
    # after step index 1 the control weight is 0: the same as a control window ending after two of four steps
    window = ours("a cat", control_guidance_end=0.5, generator=gen(0), **kw).images
    assert torch.allclose(cut, window, atol=1e-6)


def test_prompt_embeds_returned_by_a_callback_are_used(pair):
    ours, _ = pair

    def drop_control(pipe, i, t, kw):  # from step 1 on, the control prompt is the unconditional one
        return {"prompt_embeds": kw["negative_prompt_embeds"]} if i == 0 else {}

    kw = dict(num_inference_steps=4, guidance_scale=4.0, domain_guidance_scale=1.5, output_type="latent")
    out = ours("a cat", callback_on_step_end=drop_control,
               callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"], generator=gen(0), **kw).images
    window = ours("a cat", control_guidance_end=0.25, generator=gen(0), **kw).images
    assert torch.allclose(out, window, atol=1e-5)


def clip_skip_reference(pipe, prompts, clip_skip):
    """Stable Diffusion's clip_skip rule, written out: diffusers 0.42 itself fails on it with transformers 5
    (CLIPTextModel has no ``text_model`` there any more)."""
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    return pipe.text_encoder.final_layer_norm(hidden)


def test_clip_skip_equals_stable_diffusion_fed_the_same_embeddings(pair):
    ours, sd = pair
    with torch.no_grad():
        cond = clip_skip_reference(ours, ["a red apple", "a dog"], 1)
        uncond = ours.encode_text(["blurry", ""], torch.device("cpu"))
    kw = dict(guidance_scale=5.0, output_type="np", num_inference_steps=4)
    ref = sd(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=gen(0), **kw).images
    out = ours(["a red apple", "a dog"], negative_prompt=["blurry", ""], clip_skip=1, domain_guidance_scale=0,
               generator=gen(0), **kw).images
    plain = ours(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=0, generator=gen(0), **kw).images
    assert abs(ref - out).max() <= 1e-5 and abs(plain - out).max() > 1e-4


def test_encode_prompt_has_stable_diffusions_signature_and_result(pair):
    ours, sd = pair
    args = ("a cat", torch.device("cpu"), 2, True)
    for a, b in zip(ours.encode_prompt(*args, negative_prompt="blurry"), sd.encode_prompt(*args, negative_prompt="blurry")):
        assert torch.equal(a, b)
    with torch.no_grad():
        skipped, _ = ours.encode_prompt("a cat", torch.device("cpu"), 1, False, clip_skip=1)
        assert torch.allclose(skipped, clip_skip_reference(ours, ["a cat"], 1))


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_dtype_reaches_every_component_and_the_domain_model(domain, tmp_path, key):
    prior = save_tiny_prior(tmp_path / "prior")
    domain.save_pretrained(tmp_path / "domain")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # `dtype` is the current name: no deprecation warning
        if key == "torch_dtype":
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch_dtype.*")
        pipe = InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "domain", **{key: torch.bfloat16})
    assert {pipe.unet.dtype, pipe.domain_unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3)


def test_domain_model_from_the_hub_cache(domain, tmp_path):
    """A hub id resolves through huggingface_hub's cache (HF_HUB_OFFLINE=1 here, so nothing is downloaded)."""
    prior = save_tiny_prior(tmp_path / "prior")
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--someone--emoji-domain" / "snapshots" / commit
    domain.save_pretrained(snapshot)
    (cache / "models--someone--emoji-domain" / "refs").mkdir()
    (cache / "models--someone--emoji-domain" / "refs" / "main").write_text(commit)
    pipe = InDomainPipeline.from_pretrained(prior, domain_unet="someone/emoji-domain", cache_dir=cache)
    assert torch.equal(pipe.domain_unet.unet.conv_in.weight, domain.unet.conv_in.weight)
    with pytest.raises(FileNotFoundError, match="hub's cache"):
        InDomainPipeline.from_pretrained(prior, domain_unet="someone/missing", cache_dir=cache)


def test_null_text_unet_loads_from_subfolder_and_variant(domain, tmp_path):
    domain.save_pretrained(tmp_path / "repo" / "domain", variant="fp16")
    loaded = NullTextUNet.from_pretrained(tmp_path / "repo", subfolder="domain", variant="fp16")
    assert torch.equal(loaded.unet.conv_in.weight, domain.unet.conv_in.weight)
    shutil.rmtree(tmp_path / "repo")
