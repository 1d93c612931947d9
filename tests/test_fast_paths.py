"""Fast paths of the sampler (issue #15): each is checked against the reference path on CPU."""

import numpy as np
from PIL import Image
import pytest
import torch

from indomain import InDomainPipeline, NullTextUNet
from indomain.testing import tiny_unet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class OffsetDomain(torch.nn.Module):
    """A domain model whose prediction is the prior's ∅ prediction plus a fixed offset: its difference to ∅ is the
    same at every step, so reusing it across steps is exact."""

    def __init__(self, pipe):
        super().__init__()
        self.pipe, self.calls = pipe, 0
        self.offset = 0.05 * torch.randn(1, 4, 16, 16, generator=gen(5))

    def __call__(self, x, t, encoder_hidden_states=None, **kw):
        self.calls += 1
        null = self.pipe._null.expand(x.shape[0], -1, -1)
        return (self.pipe.unet(x, t, encoder_hidden_states=null, return_dict=False)[0] + self.offset,)


@pytest.fixture
def pipe(components, null_embedding):
    domain = NullTextUNet.from_prior(tiny_unet(seed=3), null_embedding, scheduler=components["scheduler"])
    p = InDomainPipeline(**components, domain_unet=domain)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("every", [2, 3])
def test_reusing_the_domain_term_is_exact_when_it_does_not_change(pipe, every, monkeypatch):
    offset = OffsetDomain(pipe)
    pipe._null = pipe.encode_text([""], "cpu")
    monkeypatch.setattr(pipe, "call_denoiser", lambda model, x, t, inputs, extra, attention_kwargs=None: (
        offset(x, t)[0] if model is pipe.domain_unet else model(x, t, cross_attention_kwargs=attention_kwargs,
                                                                return_dict=False, **inputs, **extra)[0]))
    kw = dict(prompt=["a cat", "a dog"], num_inference_steps=6, output_type="np", domain_guidance_scale=2.5)
    ref = pipe(**kw, generator=gen()).images
    assert offset.calls == 6
    offset.calls = 0
    fast = pipe(**kw, generator=gen(), domain_guidance_every=every).images
    assert offset.calls == len(range(0, 6, every))  # the domain model runs on steps 0, k, 2k, ... only
    assert np.abs(fast - ref).max() < 1e-5


def test_reusing_the_domain_term_changes_a_real_domain_model_and_every_1_is_the_default(pipe):
    kw = dict(prompt="a cat", num_inference_steps=6, output_type="np")
    ref = pipe(**kw, generator=gen()).images
    assert np.array_equal(pipe(**kw, generator=gen(), domain_guidance_every=1).images, ref)
    assert not np.allclose(pipe(**kw, generator=gen(), domain_guidance_every=2).images, ref, atol=1e-4)
    with pytest.raises(ValueError, match="domain_guidance_every"):
        pipe(**kw, domain_guidance_every=0)


def test_concurrent_branches_give_the_same_images_and_one_call_per_model(pipe):
    """`enable_concurrent_branches` hands the step's model calls to `run_on_streams`: one thunk per model (prior ∅+c
    batched, domain), results in order; off CUDA they run in order, so the images are exactly the reference's."""
    from indomain import streams

    kw = dict(prompt=["a cat", "a dog"], num_inference_steps=3, output_type="np", domain_guidance_scale=2.5)
    ref = pipe(**kw, generator=gen()).images
    batches = []
    runner = streams.run_on_streams

    def spy(calls):
        batches.append(len(calls))
        return runner(calls)

    pipe.enable_concurrent_branches()
    pipe._branch_runner = spy
    assert np.array_equal(pipe(**kw, generator=gen()).images, ref)
    assert batches == [2, 2, 2]  # the prior and the domain model, every step
    pipe.disable_concurrent_branches()
    assert np.array_equal(pipe(**kw, generator=gen()).images, ref)
    assert runner([lambda: 1, lambda: 2, lambda: 3]) == [1, 2, 3]


def test_channels_last_gives_the_same_images(pipe):
    """channels_last on both UNets changes the memory layout, not the result (to float round-off)."""
    kw = dict(prompt="a cat", num_inference_steps=3, output_type="np", domain_guidance_scale=2.5)
    ref = pipe(**kw, generator=gen()).images
    for module in (pipe.unet, pipe.domain_unet):
        module.to(memory_format=torch.channels_last)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(pipe(**kw, generator=gen()).images, ref, atol=1e-5)


def test_the_combined_step_compiles_as_one_graph(pipe):
    """torch.compile(fullgraph=True) of one whole step of Eq. C (every branch, the batching and the combination)
    raises on any graph break. The eager backend checks the capture only (CPU CI has no compiler to spare)."""
    pipe.begin_call("a cat", None, 32, 32, 2.5, 2.5, None, None, None, ("latents",), 0.0, None, None)
    cond = pipe.prepare_conditioning("a cat", None, None, None, None, [("blurry", -1.0)], 1, None, torch.device("cpu"))
    pipe.scheduler.set_timesteps(4)
    x, t = torch.randn(1, 4, 16, 16, generator=gen(1)), pipe.scheduler.timesteps[1]

    def step(x, t):
        return pipe.predict(x, t, cond, 1, 4)

    with torch.no_grad():
        ref = step(x, t)
        out = torch.compile(step, fullgraph=True, backend="eager")(x, t)
    assert torch.equal(out, ref)


@pytest.fixture
def lora_world(tmp_path, components, null_embedding):
    """A tiny prior folder and an adapter-only (LoRA) null-text domain model with non-trivial adapters."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from indomain.loading import save_lora
    from indomain.train import LORA_TARGETS

    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "prior")
    model = NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"])
    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # gaussian init leaves B at zero: make the adapter matter
    save_lora(model, tmp_path / "lora-domain")
    return tmp_path / "prior", tmp_path / "lora-domain"


def count_calls(module):
    calls = {"n": 0}
    forward = module.forward

    def counted(*a, **k):
        calls["n"] += 1
        return forward(*a, **k)

    module.forward = counted
    return calls


def test_shared_base_lora_domain_runs_every_branch_in_one_call_with_the_same_images(lora_world):
    prior, domain = lora_world
    separate = InDomainPipeline.from_pretrained(prior, domain_unet=domain)
    shared = InDomainPipeline.from_pretrained(prior, domain_unet=domain, share_base=True)
    assert shared.domain_unet is None and shared.shared_domain.weights > 0
    for p in (separate, shared):
        p.set_progress_bar_config(disable=True)
    calls = count_calls(shared.unet)
    kw = dict(prompt=["a cat", "a dog"], num_inference_steps=4, output_type="np", weighted_prompts=[("blurry", -0.5)])
    a = separate(**kw, generator=gen()).images
    b = shared(**kw, generator=gen()).images
    assert calls["n"] == 4  # one UNet call per step: ∅, the prompt, the weighted prompt and the domain rows together
    assert np.abs(a - b).max() < 2e-4  # the adapter unfused vs fused: float round-off only
    assert np.abs(a - separate(**kw, generator=gen(), domain_guidance_scale=0).images).max() > 1e-2  # the domain acts
    # ordinary calls see the prior alone: w_d = 0 equals the plain prior exactly
    plain = InDomainPipeline.from_pretrained(prior)
    plain.set_progress_bar_config(disable=True)
    assert np.array_equal(shared(**kw, generator=gen(), domain_guidance_scale=0).images,
                          plain(**kw, generator=gen(), domain_guidance_scale=0).images)
    # reuse across steps works on the shared path too
    assert np.abs(shared(**kw, generator=gen(), domain_guidance_every=2).images
                  - separate(**kw, generator=gen(), domain_guidance_every=2).images).max() < 2e-4


def test_shared_base_needs_a_lora_folder(lora_world, tmp_path, components, null_embedding):
    prior, _ = lora_world
    NullTextUNet.from_prior(components["unet"], null_embedding).save_pretrained(tmp_path / "full")
    with pytest.raises(ValueError, match="adapter-only"):
        InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "full", share_base=True)


def test_generate_share_base_flag(lora_world, tmp_path):
    from indomain.cli import main

    prior, domain = lora_world
    # --share-base serves Eq. A (decoupled); auto would pick domain-text for the separate model only
    common = ["generate", "--prior", str(prior), "--domain", str(domain), "--prompt", "a cat", "--steps", "3",
              "--guidance-form", "decoupled"]
    assert main(common + ["--out", str(tmp_path / "separate")]) == 0
    assert main(common + ["--share-base", "--out", str(tmp_path / "shared")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / d / "p00_seed000000.png"), np.int16) for d in ("separate", "shared"))
    assert np.abs(a - b).max() <= 1
    full = tmp_path / "full"
    assert main(["generate", "--prior", str(prior), "--share-base", "--out", str(full)]) == 2
    assert not full.exists()  # refused before anything was written
