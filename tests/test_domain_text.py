"""The domain-text guidance form (issue #24): the control term measured by the domain model with the prior's
cross-attention put back. Exact where it must be, different where it should be, refused where it cannot apply."""

import pytest
import torch

from indomain import NullTextUNet
from indomain.nulltext import ConstantCrossAttention, prior_text_pathway
from indomain.pipeline import InDomainPipeline
from indomain.testing import tiny_unet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def copy_of_prior(components, null_embedding):
    """An untrained null-text copy of the prior: with the text pathway put back it *is* the prior."""
    return NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"])


@pytest.fixture
def other_domain(components, null_embedding):
    return NullTextUNet.from_prior(tiny_unet(seed=3), null_embedding, scheduler=components["scheduler"])


def test_text_pathway_of_an_untrained_copy_is_the_prior_and_is_restored(components, copy_of_prior, null_embedding):
    prior = components["unet"]
    x, t = torch.randn(2, 4, 16, 16, generator=gen(1)), torch.tensor(500)
    text = torch.randn(2, 77, 32, generator=gen(2))
    with torch.no_grad():
        ref = prior(x, t, encoder_hidden_states=text).sample
        with prior_text_pathway(copy_of_prior, prior) as unet:
            got = unet(x, t, encoder_hidden_states=text).sample
        after = copy_of_prior(x, t).sample
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # on leaving, the domain model is text-free again (constant cross-attention, the same prediction as before)
    assert all(isinstance(m, ConstantCrossAttention) for n, m in copy_of_prior.unet.named_modules() if n.endswith("attn2"))
    with torch.no_grad():
        torch.testing.assert_close(after, copy_of_prior(x, t).sample)
        assert not torch.allclose(after, ref)  # the constant model ignores the text
    with pytest.raises(RuntimeError), prior_text_pathway(copy_of_prior, prior):
        raise RuntimeError("boom")
    assert all(isinstance(m, ConstantCrossAttention) for n, m in copy_of_prior.unet.named_modules() if n.endswith("attn2"))


def test_domain_text_with_the_prior_as_domain_is_plain_cfg(components, copy_of_prior):
    # eps_p(∅) + w_d (eps_dt(∅) − eps_p(∅)) + w_c (eps_dt(c) − eps_dt(∅)) with dt = prior: CFG at w_c, whatever w_d
    pipe = InDomainPipeline(**components, domain_unet=copy_of_prior)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, guidance_scale=3.0, output_type="latent")
    cfg = pipe(["a red apple", "a dog"], domain_guidance_scale=0.0, generator=gen(0), **kw).images
    ours = pipe(["a red apple", "a dog"], domain_guidance_scale=2.5, guidance_form="domain-text", generator=gen(0), **kw).images
    torch.testing.assert_close(ours, cfg, rtol=0, atol=1e-5)
    # Eq. A with the same null-text copy is not CFG: its domain branch is the calibrated constant model
    eq_a = pipe(["a red apple", "a dog"], domain_guidance_scale=2.5, generator=gen(0), **kw).images
    assert (eq_a - cfg).abs().max() > 1e-3


def test_domain_text_differs_from_eq_a_and_keeps_its_unconditional_form(components, other_domain):
    pipe = InDomainPipeline(**components, domain_unet=other_domain)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, output_type="latent")
    eq_a = pipe(["a red apple"], domain_guidance_scale=2.0, guidance_scale=2.0, generator=gen(0), **kw).images
    dt = pipe(["a red apple"], domain_guidance_scale=2.0, guidance_scale=2.0, guidance_form="domain-text",
              generator=gen(0), **kw).images
    assert (eq_a - dt).abs().max() > 1e-3
    # without a prompt it is eps_p(∅) + w_d (eps_dt(∅) − eps_p(∅)): at w_d = 1, sampling with eps_dt(∅) alone
    latents = torch.randn(1, 4, 16, 16, generator=gen(4))
    out = pipe(domain_guidance_scale=1.0, guidance_scale=0.0, guidance_form="domain-text", num_inference_steps=3,
               latents=latents.clone(), output_type="latent").images
    sched, null = pipe.scheduler, pipe.encode_text([""], "cpu")
    sched.set_timesteps(3)
    x = latents * sched.init_noise_sigma
    with torch.no_grad(), prior_text_pathway(other_domain, pipe.unet) as unet:
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t, encoder_hidden_states=null).sample, t, x).prev_sample
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_domain_text_is_refused_where_it_cannot_apply(components, other_domain):
    pipe = InDomainPipeline(**components, domain_unet=other_domain)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="guidance_form must be one of"):
        pipe("a dog", guidance_form="projected", num_inference_steps=1, output_type="latent")
    tuned = InDomainPipeline(**components, domain_unet=tiny_unet(seed=3))  # a text-conditioned fine-tune
    tuned.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="null-text domain model"):
        tuned("a dog", guidance_form="domain-text", num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="domain_guidance_every"):
        pipe("a dog", guidance_form="domain-text", domain_guidance_every=2, num_inference_steps=1, output_type="latent")
    with pytest.raises(TypeError):
        with prior_text_pathway(tiny_unet(seed=3), components["unet"]):
            pass


def test_domain_text_bands_in_the_pipeline(components, other_domain):
    # w_l = w_c gives domain-text's images; another w_l moves them; the same refusals as domain-text
    pipe = InDomainPipeline(**components, domain_unet=other_domain)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(domain_guidance_scale=3.0, guidance_scale=4.0, num_inference_steps=3, output_type="latent")
    dt = pipe(["a red apple"], guidance_form="domain-text", generator=gen(0), **kw).images
    same = pipe(["a red apple"], guidance_form="domain-text-bands", layout_guidance_scale=4.0, generator=gen(0), **kw).images
    bands = pipe(["a red apple"], guidance_form="domain-text-bands", layout_guidance_scale=1.0, generator=gen(0), **kw).images
    torch.testing.assert_close(same, dt, rtol=0, atol=1e-6)
    assert (bands - dt).abs().max() > 1e-3
    tuned = InDomainPipeline(**components, domain_unet=tiny_unet(seed=3))
    tuned.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="guidance_form='domain-text-bands' needs a null-text domain model"):
        tuned("a dog", guidance_form="domain-text-bands", num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="layout_sigma positive"):
        pipe("a dog", guidance_form="domain-text-bands", layout_sigma=0.0, num_inference_steps=1, output_type="latent")
