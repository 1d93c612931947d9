"""Fast paths of the sampler (issue #15): each is checked against the reference path on CPU."""

import numpy as np
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
