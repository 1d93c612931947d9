"""Spatial control in the domain (issue #11, first part): ControlNet and T2I-Adapter in the sampling core.

At domain weight 0 our pipeline equals diffusers' `StableDiffusionControlNetPipeline` (one and several ControlNets)
and `StableDiffusionAdapterPipeline`; the residuals reach the domain branch only with ``controlnet_to_domain=True``.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    ControlNetModel, MultiAdapter, StableDiffusionAdapterPipeline, StableDiffusionControlNetPipeline, T2IAdapter,
)

from indomain import NullTextUNet
from indomain.editing import InDomainImg2ImgPipeline
from indomain.pipeline import InDomainPipeline
from indomain.testing import tiny_unet

SD_EXTRAS = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_controlnet(unet, seed=1):
    """A ControlNet copied from the tiny prior UNet; its zero convolutions get random weights so that it steers."""
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.normal_(0, 0.05)
    return net.eval()


def tiny_adapter(seed=2, in_channels=3, channels=(32, 64)):
    torch.manual_seed(seed)
    return T2IAdapter(in_channels=in_channels, channels=list(channels), num_res_blocks=2, downscale_factor=2,
                      adapter_type="full_adapter").eval()


def control_image(seed=0, size=(32, 32), mode="RGB"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels).convert(mode)


@pytest.fixture
def domain(components, null_embedding):
    return NullTextUNet.from_prior(tiny_unet(seed=3), null_embedding, scheduler=components["scheduler"])


def quiet(*pipes):
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    return pipes


KW = dict(negative_prompt=["blurry", ""], guidance_scale=5.0, num_inference_steps=4, output_type="np")


def diff(a, b):
    return float(abs(torch.as_tensor(a) - torch.as_tensor(b)).max())


def test_controlnet_equals_diffusers_at_domain_weight_zero(components, domain):
    net = tiny_controlnet(components["unet"])
    ours, sd = quiet(InDomainPipeline(**components, domain_unet=domain, controlnet=net),
                     StableDiffusionControlNetPipeline(**components, controlnet=net, **SD_EXTRAS))
    image = control_image()
    kw = dict(KW, controlnet_conditioning_scale=0.8)
    ref = sd(["a red apple", "a dog"], image=image, generator=gen(0), **kw).images
    out = ours(["a red apple", "a dog"], image=image, domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(ref, out) <= 1e-5
    other = ours(["a red apple", "a dog"], image=control_image(1), domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(out, other) > 1e-4  # the control image matters


def test_multi_controlnet_equals_diffusers_at_domain_weight_zero(components, domain):
    nets = [tiny_controlnet(components["unet"], seed=1), tiny_controlnet(components["unet"], seed=5)]
    ours, sd = quiet(InDomainPipeline(**components, domain_unet=domain, controlnet=nets),
                     StableDiffusionControlNetPipeline(**components, controlnet=nets, **SD_EXTRAS))
    images = [control_image(0), control_image(1)]
    kw = dict(KW, controlnet_conditioning_scale=[0.7, 1.3], num_images_per_prompt=2)
    ref = sd(["a red apple", "a dog"], image=images, generator=gen(0), **kw).images
    out = ours(["a red apple", "a dog"], image=images, domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(ref, out) <= 1e-5


def test_adapter_equals_diffusers_at_domain_weight_zero(components, domain):
    adapter = tiny_adapter()
    ours, sd = quiet(InDomainPipeline(**components, domain_unet=domain, adapter=adapter),
                     StableDiffusionAdapterPipeline(**components, adapter=adapter, **SD_EXTRAS))
    kw = dict(KW, negative_prompt="blurry", adapter_conditioning_scale=0.6)
    ref = sd("a red apple", image=control_image(), generator=gen(0), **kw).images
    out = ours("a red apple", image=control_image(), domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(ref, out) <= 1e-5
    other = ours("a red apple", image=control_image(1), domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(out, other) > 1e-4


def record_domain(pipe):
    """The residual keyword arguments and the output of every domain-model call."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append({**{k: kwargs.get(k) for k in ("down_block_additional_residuals", "mid_block_additional_residual",
                                                   "down_intrablock_additional_residuals")}, "out": output[0]})

    return calls, pipe.domain_unet.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("kind", ["controlnet", "adapter"])
def test_residuals_reach_the_domain_branch_only_when_asked(components, domain, kind):
    extra = {"controlnet": tiny_controlnet(components["unet"])} if kind == "controlnet" else {"adapter": tiny_adapter()}
    (pipe,) = quiet(InDomainPipeline(**components, domain_unet=domain, **extra))
    key = "down_block_additional_residuals" if kind == "controlnet" else "down_intrablock_additional_residuals"
    kw = dict(image=control_image(), domain_guidance_scale=2.0, num_inference_steps=2, output_type="latent")
    results = {}
    for to_domain in (False, True):
        calls, handle = record_domain(pipe)
        results[to_domain] = pipe("a cat", controlnet_to_domain=to_domain, generator=gen(0), **kw).images
        handle.remove()
        assert len(calls) == 2
        assert all((c[key] is not None) == to_domain for c in calls)
        results[to_domain, "eps"] = calls[0]["out"]  # the domain prediction at the first step (same x_t both times)
    assert diff(results[False, "eps"], results[True, "eps"]) > 1e-4
    assert diff(results[False], results[True]) > 1e-4


def test_control_window_gates_the_controlnet(components, domain):
    net = tiny_controlnet(components["unet"])
    (pipe,) = quiet(InDomainPipeline(**components, domain_unet=domain, controlnet=net))
    calls = []
    handle = net.register_forward_hook(lambda *a: calls.append(1))
    kw = dict(image=control_image(), num_inference_steps=4, control_guidance_end=0.5, output_type="latent")
    pipe("a cat", controlnet_to_domain=False, **kw)
    assert len(calls) == 2  # steps 0 and 1 of 4; the prior's two branches share one batched call
    pipe("a cat", **kw)  # the default: the domain branch gets its residuals too, in the same window
    handle.remove()
    assert len(calls) == 2 + 4


def test_editing_inherits_the_control(components, domain):
    net = tiny_controlnet(components["unet"])
    (pipe,) = quiet(InDomainImg2ImgPipeline(**components, domain_unet=domain, controlnet=net))
    kw = dict(image=control_image(7), strength=0.8, num_inference_steps=4, output_type="np")
    a = pipe("a cat", control_image=control_image(0), generator=gen(0), **kw).images
    b = pipe("a cat", control_image=control_image(1), generator=gen(0), **kw).images
    assert diff(a, b) > 1e-4
    with pytest.raises(ValueError, match="pass its control image"):
        pipe("a cat", generator=gen(0), **kw)


def test_control_image_errors_name_the_problem(components, domain):
    net = tiny_controlnet(components["unet"])
    (pipe,) = quiet(InDomainPipeline(**components, domain_unet=domain, controlnet=net))
    kw = dict(num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="mode 'I;16'"):
        pipe("a cat", image=control_image().convert("L").convert("I;16"), **kw)
    with pytest.raises(ValueError, match="aspect ratio"):
        pipe("a cat", image=control_image(size=(64, 32)), height=32, width=32, **kw)
    with pytest.raises(ValueError, match="1 channels; this ControlNet takes 3"):
        pipe("a cat", image=torch.rand(1, 1, 32, 32), **kw)
    with pytest.raises(ValueError, match="3 control images for 2 prompt"):
        pipe(["a cat", "a dog"], image=[control_image(i) for i in range(3)], **kw)
    with pytest.raises(ValueError, match="no controlnet or adapter"):
        quiet(InDomainPipeline(**components))[0]("a cat", image=control_image(), domain_guidance_scale=0, **kw)
    with pytest.raises(ValueError, match="guess_mode"):
        pipe("a cat", image=control_image(), guess_mode=True, **kw)
    (adapted,) = quiet(InDomainPipeline(**components, adapter=tiny_adapter(in_channels=1)))
    with pytest.raises(ValueError, match="3 channel.*takes 1 \\(mode L\\)"):
        adapted("a cat", image=control_image(), domain_guidance_scale=0, **kw)
    out = adapted("a cat", image=control_image(mode="L"), domain_guidance_scale=0, **kw).images
    assert out.shape == (1, 4, 16, 16)


def test_control_models_for_another_architecture_are_refused(components):
    wide = ControlNetModel.from_unet(tiny_unet(block_out_channels=(64, 128)), conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(ValueError, match="block_out_channels is \\(64, 128\\), the prior UNet's is \\(32, 64\\)"):
        InDomainPipeline(**components, controlnet=wide)
    other_text = ControlNetModel.from_unet(tiny_unet(cross_attention_dim=64), conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(ValueError, match="controlnet\\[1\\] does not fit this prior: its cross_attention_dim is 64"):
        InDomainPipeline(**components, controlnet=[tiny_controlnet(components["unet"]), other_text])
    with pytest.raises(ValueError, match="downsamples its control image by 8"):
        InDomainPipeline(**components, controlnet=ControlNetModel.from_unet(components["unet"]))
    with pytest.raises(ValueError, match="adapter does not fit this prior: its channels are \\(64, 128\\)"):
        InDomainPipeline(**components, adapter=tiny_adapter(channels=(64, 128)))
    with pytest.raises(ValueError, match="adapter\\[0\\] does not fit"):
        InDomainPipeline(**components, adapter=MultiAdapter([tiny_adapter(channels=(64, 128)), tiny_adapter()]))


def test_from_pretrained_with_a_controlnet_and_the_saved_pipeline_round_trip(components, domain, tmp_path):
    from indomain.testing import save_tiny_prior

    prior = save_tiny_prior(tmp_path / "prior")
    domain.save_pretrained(tmp_path / "domain")
    net = tiny_controlnet(tiny_unet())  # the tiny prior's UNet (seed 0)
    net.save_pretrained(tmp_path / "controlnet")
    pipe = InDomainPipeline.from_pretrained(prior, domain_unet=tmp_path / "domain",
                                            controlnet=ControlNetModel.from_pretrained(tmp_path / "controlnet"))
    quiet(pipe)
    kw = dict(image=control_image(), num_inference_steps=2, output_type="np", generator=gen(0))
    ref = pipe("a cat", **kw).images
    pipe.save_pretrained(tmp_path / "pipe")
    (loaded,) = quiet(InDomainPipeline.from_pretrained(tmp_path / "pipe"))
    assert isinstance(loaded.controlnet, ControlNetModel) and loaded.adapter is None
    assert diff(loaded("a cat", **{**kw, "generator": gen(0)}).images, ref) <= 1e-6
