"""Control branches from other models (issue #11, §2): several domain models, a LoRA'd prior with ∅ from the pristine
or the LoRA'd prior, and a customised checkpoint as the model of the control term."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from indomain import DomainModels, NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.testing import tiny_sd_components, tiny_unet

SD_EXTRAS = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def quiet(*pipes):
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    return pipes


def null_text(components, seed):
    tok, te = components["tokenizer"], components["text_encoder"]
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        null = te(ids)[0]
    return NullTextUNet.from_prior(tiny_unet(seed=seed), null, scheduler=components["scheduler"])


@torch.no_grad()
def reference(pipe, prompt, steps, wc, uncond_unet, control_unet, domains, seed=0):
    """Eq. C written out by hand: eps_u + w_c (eps_c − eps_u) + Σ_j w_j (d_j − eps_u), then the scheduler's update."""
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    neg, cond = pipe.encode_text([""], "cpu"), pipe.encode_text([prompt], "cpu")
    latents = torch.randn((1, 4, 16, 16), generator=gen(seed)) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.scale_model_input(latents, t)
        eps_u = uncond_unet(x, t, encoder_hidden_states=neg).sample
        eps = eps_u + wc * (control_unet(x, t, encoder_hidden_states=cond).sample - eps_u)
        for model, w in domains:
            eps = eps + w * (model(x, t).sample - eps_u)
        latents = sched.step(eps, t, latents, eta=0.0).prev_sample
    return latents


def diff(a, b):
    return float(abs(torch.as_tensor(a) - torch.as_tensor(b)).max())


def close(out, ref):
    """Equal up to float32 rounding (batched vs one-by-one UNet calls), relative to the latents' size (~5)."""
    return diff(out, ref) <= 1e-5 * max(1.0, float(abs(ref).max()))


# -- several domain models ------------------------------------------------------------------------------------------


def test_two_domain_models_give_eq_c_with_two_domain_terms(components, tmp_path):
    d1, d2 = null_text(components, 3), null_text(components, 4)
    (pipe,) = quiet(InDomainPipeline(**components, domain_unet=d1, extra_domains=[d2]))
    kw = dict(num_inference_steps=3, guidance_scale=2.0, output_type="latent")
    out = pipe("a cat", domain_guidance_scale=1.5, domain_weights=[0.7], generator=gen(0), **kw).images
    ref = reference(pipe, "a cat", 3, 2.0, pipe.unet, pipe.unet, [(d1, 1.5), (d2, 0.7)])
    assert close(out, ref)
    one = pipe("a cat", domain_guidance_scale=1.5, domain_weights=[0.0], generator=gen(0), **kw).images
    assert close(one, reference(pipe, "a cat", 3, 2.0, pipe.unet, pipe.unet, [(d1, 1.5)]))
    assert diff(one, out) > 1e-4

    # only extra domains, no primary one: eps_u + w1 (d1 − eps_u) + w2 (d2 − eps_u)
    (mix,) = quiet(InDomainPipeline(**components, extra_domains=DomainModels.from_models([d1, d2], [0.6, 0.9])))
    got = mix("a cat", domain_guidance_scale=0, generator=gen(0), **kw).images  # the stored weights
    assert close(got, reference(mix, "a cat", 3, 2.0, mix.unet, mix.unet, [(d1, 0.6), (d2, 0.9)]))

    # a registered component: save_pretrained / from_pretrained round trip, weights and models kept
    mix.save_pretrained(tmp_path / "pipe")
    (loaded,) = quiet(InDomainPipeline.from_pretrained(tmp_path / "pipe"))
    assert isinstance(loaded.extra_domains, DomainModels) and list(loaded.extra_domains.config.weights) == [0.6, 0.9]
    assert diff(loaded("a cat", domain_guidance_scale=0, generator=gen(0), **kw).images, got) <= 1e-6
    assert "extra_domains" in loaded.components


def test_domain_weight_errors(components):
    d2 = null_text(components, 4)
    (pipe,) = quiet(InDomainPipeline(**components, extra_domains=[d2]))
    kw = dict(num_inference_steps=1, output_type="latent", domain_guidance_scale=0)
    with pytest.raises(ValueError, match="domain_weights has 2 entries but the pipeline has 1"):
        pipe("a cat", domain_weights=[1.0, 2.0], **kw)
    with pytest.raises(ValueError, match="has none"):
        quiet(InDomainPipeline(**components))[0]("a cat", domain_weights=[1.0], **kw)
    with pytest.raises(ValueError, match="extra domain model 1: domain model does not fit"):
        wide = NullTextUNet.from_prior(tiny_unet(block_out_channels=(64, 128)), torch.zeros(1, 77, 32),
                                       scheduler=components["scheduler"])
        InDomainPipeline(**components, extra_domains=[wide])


# -- a customised checkpoint as the control model --------------------------------------------------------------------


def test_control_unet_gives_the_control_term(components):
    d1, custom = null_text(components, 3), tiny_unet(seed=7)
    (pipe,) = quiet(InDomainPipeline(**components, domain_unet=d1, control_unet=custom))
    out = pipe("a cat", num_inference_steps=3, guidance_scale=2.0, domain_guidance_scale=1.5, generator=gen(0),
               output_type="latent").images
    assert close(out, reference(pipe, "a cat", 3, 2.0, pipe.unet, custom, [(d1, 1.5)]))
    with pytest.raises(ValueError, match="control_unet does not fit this prior: its cross_attention_dim is 64"):
        InDomainPipeline(**components, control_unet=tiny_unet(cross_attention_dim=64))
    with pytest.raises(ValueError, match="control_unet must be a UNet2DConditionModel"):
        InDomainPipeline(**components, control_unet=d1)


# -- a LoRA on the prior: ∅ from the LoRA'd prior (default) or the pristine one ----------------------------------------


def save_tiny_lora(folder, seed=11):
    """A LoRA made with peft on the tiny prior UNet (nonzero B, so that it changes the prediction), written by
    diffusers' `save_lora_weights` as any SD LoRA is."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = tiny_unet()
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionLoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder


def test_lora_default_equals_diffusers_at_domain_weight_zero(components, tmp_path):
    lora = save_tiny_lora(tmp_path / "lora")
    d1 = null_text(components, 3)
    ours = InDomainPipeline(**components, domain_unet=d1)
    sd = StableDiffusionPipeline(**tiny_sd_components(tmp_path / "tok2"), **SD_EXTRAS)
    quiet(ours, sd)
    kw = dict(negative_prompt=["blurry", ""], guidance_scale=5.0, num_inference_steps=4, output_type="np")
    plain = ours(["a red apple", "a dog"], domain_guidance_scale=0, generator=gen(0), **kw).images
    for p in (ours, sd):
        p.load_lora_weights(lora)
    ref = sd(["a red apple", "a dog"], generator=gen(0), **kw).images
    out = ours(["a red apple", "a dog"], domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(ref, out) <= 1e-5
    assert diff(plain, out) > 1e-4  # the LoRA matters
    # the pristine-∅ call leaves the LoRA enabled afterwards
    ours(["a red apple", "a dog"], domain_guidance_scale=0, lora_in_uncond=False, generator=gen(0), **kw)
    assert diff(ref, ours(["a red apple", "a dog"], domain_guidance_scale=0, generator=gen(0), **kw).images) <= 1e-5


def test_lora_disabled_for_the_unconditional_branch(components, tmp_path):
    lora = save_tiny_lora(tmp_path / "lora")
    d1 = null_text(components, 3)
    (pipe,) = quiet(InDomainPipeline(**components, domain_unet=d1))
    pristine = tiny_unet()  # the same prior, never LoRA'd
    with pytest.raises(ValueError, match="no LoRA is loaded"):
        pipe("a cat", lora_in_uncond=False, num_inference_steps=1, output_type="latent")
    pipe.load_lora_weights(lora)

    # the ∅ predictor with adapters disabled is the prior without the LoRA; the default one is not
    x, t, neg = torch.randn(2, 4, 16, 16, generator=gen(1)), torch.tensor(500), pipe.encode_text(["", ""], "cpu")
    with torch.no_grad():
        models = pipe.guided()
        base = pristine(x, t, encoder_hidden_states=neg).sample
        assert diff(models["prior_without_lora"](x, t, neg), base) <= 1e-5
        assert diff(models["prior"](x, t, neg), base) > 1e-4

    # and over a whole trajectory: eps_prior(∅) + w_c (eps_lora(c) − eps_prior(∅)) + w_d (d − eps_prior(∅))
    kw = dict(num_inference_steps=3, guidance_scale=2.0, domain_guidance_scale=1.5, output_type="latent")
    out = pipe("a cat", lora_in_uncond=False, generator=gen(0), **kw).images
    assert close(out, reference(pipe, "a cat", 3, 2.0, pristine, pipe.unet, [(d1, 1.5)]))
    lora_u = pipe("a cat", generator=gen(0), **kw).images
    assert close(lora_u, reference(pipe, "a cat", 3, 2.0, pipe.unet, pipe.unet, [(d1, 1.5)]))
    assert diff(out, lora_u) > 1e-4


# -- IP-Adapter (image prompts) on the prior ---------------------------------------------------------------------------


def tiny_ip_adapter(unet, seed=13):
    """A CLIP image encoder, its processor, and a random IP-Adapter (diffusers' layout) loaded into ``unet`` with
    diffusers' own loader (`_load_ip_adapter_weights`, what `load_ip_adapter` calls)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    dim = unet.config.cross_attention_dim
    proj = {"proj.weight": torch.randn(4 * dim, 32) * 0.2, "proj.bias": torch.randn(4 * dim) * 0.1,
            "norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)}
    ip, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            shape = unet.get_submodule(name[: -len(".processor")]).to_k.weight.shape
            ip[f"{key}.to_k_ip.weight"] = torch.randn(shape) * 0.2
            ip[f"{key}.to_v_ip.weight"] = torch.randn(shape) * 0.2
            key += 2  # diffusers numbers the cross-attention layers 1, 3, 5, ...
    unet._load_ip_adapter_weights([{"image_proj": proj, "ip_adapter": ip}], low_cpu_mem_usage=False)
    return encoder, processor


def test_ip_adapter_equals_diffusers_at_domain_weight_zero(components):
    import numpy as np
    import PIL.Image

    d1 = null_text(components, 3)
    encoder, processor = tiny_ip_adapter(components["unet"])
    ours = InDomainPipeline(**components, domain_unet=d1, image_encoder=encoder, feature_extractor=processor)
    sd = StableDiffusionPipeline(**components, image_encoder=encoder, feature_extractor=processor, safety_checker=None,
                                 requires_safety_checker=False)
    quiet(ours, sd)
    picture = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    kw = dict(negative_prompt="blurry", guidance_scale=5.0, num_inference_steps=3, num_images_per_prompt=2,
              output_type="np")
    ref = sd("a cat", ip_adapter_image=picture, generator=gen(0), **kw).images
    out = ours("a cat", ip_adapter_image=picture, domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(ref, out) <= 1e-5
    embeds = [torch.randn(2, 1, 32, generator=gen(4))]
    ref = sd("a cat", ip_adapter_image_embeds=embeds, generator=gen(0), **kw).images
    out2 = ours("a cat", ip_adapter_image_embeds=embeds, domain_guidance_scale=0, generator=gen(0), **kw).images
    assert diff(ref, out2) <= 1e-5 and diff(out, out2) > 1e-4  # the image prompt matters
    # in-domain: the domain term joins; the image prompt still steers
    a = ours("a cat", ip_adapter_image_embeds=embeds, domain_guidance_scale=2.0, generator=gen(0), **kw).images
    assert diff(a, out2) > 1e-4
    with pytest.raises(ValueError, match="load one with pipe.load_ip_adapter"):
        quiet(InDomainPipeline(**tiny_sd_components()))[0]("a cat", ip_adapter_image=picture, domain_guidance_scale=0,
                                                           num_inference_steps=1, output_type="latent")


def test_extra_models_move_with_the_pipeline(components):
    d2, custom = null_text(components, 4), tiny_unet(seed=7)
    pipe = InDomainPipeline(**components, extra_domains=[d2], control_unet=custom).to(torch.float64)
    assert pipe.extra_domains.dtype == torch.float64 and d2.dtype == torch.float64 and custom.dtype == torch.float64
    order = pipe.model_cpu_offload_seq.split("->")
    assert {"extra_domains", "control_unet", "image_encoder"} <= set(order)
