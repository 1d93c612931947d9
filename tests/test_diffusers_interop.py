"""The pipeline as diffusers users handle it: DiffusionPipeline.from_pretrained of a saved folder, and the speed and
memory settings (attention slicing, channels_last, torch.compile, CPU offload) reaching every denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import Attention, SlicedAttnProcessor

from indomain.nulltext import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.testing import tiny_unet


def null_text(components, seed):
    tok, te = components["tokenizer"], components["text_encoder"]
    with torch.no_grad():
        null = te(tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    return NullTextUNet.from_prior(tiny_unet(seed=seed), null, num_timesteps=2, batch_size=1).eval()


@pytest.fixture
def pipe(components):
    p = InDomainPipeline(**components, domain_unet=null_text(components, 1), extra_domains=[null_text(components, 2)],
                         control_unet=tiny_unet(seed=3))
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe):
    return pipe("a cat", num_inference_steps=2, domain_weights=[0.5], generator=torch.Generator().manual_seed(0),
                output_type="np").images


def test_diffusion_pipeline_from_pretrained_returns_the_indomain_pipeline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved")  # no custom_pipeline, no remote code
    assert type(loaded) is InDomainPipeline
    assert isinstance(loaded.domain_unet, NullTextUNet) and len(loaded.extra_domains) == 1
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(loaded), run(pipe), rtol=0, atol=1e-5)


def test_attention_slicing_reaches_every_denoiser(pipe):
    before = run(pipe)
    pipe.enable_attention_slicing(1)
    for model in pipe.denoisers():
        processors = [m.processor for m in model.modules() if isinstance(m, Attention)]
        assert processors and all(isinstance(p, SlicedAttnProcessor) for p in processors), type(model).__name__
    assert len(pipe.denoisers()) == 4  # prior, domain, control model, one extra domain
    np.testing.assert_allclose(run(pipe), before, rtol=0, atol=1e-5)


def test_channels_last_reaches_every_denoiser(pipe):
    before = run(pipe)
    pipe.set_memory_format(torch.channels_last)
    for model in pipe.denoisers():
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs), type(model).__name__
    np.testing.assert_allclose(run(pipe), before, rtol=0, atol=1e-5)


def test_compile_reaches_every_denoiser(pipe):
    before = run(pipe)
    pipe.compile_denoisers(backend="eager")  # traces without inductor's minutes of compiling
    assert all(getattr(model, "_compiled_call_impl", None) is not None for model in pipe.denoisers())
    np.testing.assert_allclose(run(pipe), before, rtol=0, atol=1e-5)


def test_model_cpu_offload_reaches_every_denoiser(pipe):
    before = run(pipe)
    pipe.enable_model_cpu_offload(device="cpu")  # the hooks are what matters; no accelerator here
    for name in ("unet", "domain_unet", "extra_domains", "control_unet"):
        assert hasattr(getattr(pipe, name), "_hf_hook"), name
    np.testing.assert_allclose(run(pipe), before, rtol=0, atol=1e-5)
