import json

import pytest
import torch

from indomain import NullTextUNet
from indomain.nulltext import ConstantCrossAttention, check_compatible
from indomain.testing import tiny_unet


def x_and_t(batch=2, seed=1):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed)), torch.tensor(500)


@torch.no_grad()
def test_constant_mode_replaces_every_cross_attention(components, null_embedding):
    model = NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"])
    consts = [m for m in model.modules() if isinstance(m, ConstantCrossAttention)]
    prior_cross = [m for n, m in components["unet"].named_modules() if n.endswith("attn2")]
    assert len(consts) == len(prior_cross) > 0
    assert not any(n.endswith("attn2.to_q") for n, _ in model.named_modules())
    assert all(c.null_text_feature.abs().sum() > 0 for c in consts)
    assert all(name.endswith("null_text_feature") for name, _ in model.named_buffers())
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in components["unet"].parameters())


@torch.no_grad()
def test_ignores_any_text_input(components, null_embedding):
    model = NullTextUNet.from_prior(components["unet"], null_embedding)
    x, t = x_and_t()
    a = model(x, t).sample
    b = model(x, t, encoder_hidden_states=torch.randn(2, 77, 32)).sample
    c = model(x, t, torch.randn(2, 5, 32), cross_attention_kwargs={"scale": 0.5}).sample
    assert torch.equal(a, b) and torch.equal(a, c)


@torch.no_grad()
def test_zero_null_embedding_is_exact(components):
    """SDXL's null text is all zeros: then cross-attention outputs to_out's bias and the constant is exact."""
    unet, zeros = components["unet"], torch.zeros(1, 77, 32)
    model = NullTextUNet.from_prior(unet, zeros)
    x, t = x_and_t(3)
    assert torch.equal(model(x, t).sample, unet(x, t, encoder_hidden_states=zeros.expand(3, -1, -1)).sample)


@torch.no_grad()
def test_zero_null_embedding_is_exact_for_sdxl_style_unet():
    unet = tiny_unet(
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8
    )
    added = {"text_embeds": torch.zeros(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    zeros = torch.zeros(1, 77, 32)
    model = NullTextUNet.from_prior(unet, zeros, null_pooled=torch.zeros(1, 32))
    x, t = x_and_t(2)
    ref = unet(x, t, encoder_hidden_states=zeros.expand(2, -1, -1), added_cond_kwargs=added).sample
    # both text paths are constant: cross-attention and the pooled embedding (any text_embeds given is ignored)
    text = {"text_embeds": torch.randn(2, 32), "time_ids": added["time_ids"]}
    assert torch.equal(model(x, t, torch.randn(2, 77, 32), added_cond_kwargs=text).sample, ref)
    # the time ids stay inputs
    other = {"time_ids": torch.tensor([[64.0, 64, 8, 8, 32, 32]] * 2)}
    assert not torch.equal(model(x, t, added_cond_kwargs=other).sample, ref)
    with pytest.raises(ValueError, match="time_ids"):
        model(x, t)
    with pytest.raises(ValueError, match="null_pooled"):
        NullTextUNet.from_prior(unet, zeros)
    # a non-zero pooled null embedding (an SDXL prior without force_zeros_for_empty_prompt) is held as given
    pooled = torch.randn(1, 32)
    model = NullTextUNet.from_prior(unet, zeros, null_pooled=pooled)
    ref = unet(x, t, encoder_hidden_states=zeros.expand(2, -1, -1),
               added_cond_kwargs={"text_embeds": pooled.expand(2, -1), "time_ids": added["time_ids"]}).sample
    assert torch.equal(model(x, t, added_cond_kwargs=text).sample, ref)


@torch.no_grad()
def test_exact_mode_reproduces_prior_unconditional(components, null_embedding):
    unet = components["unet"]
    model = NullTextUNet.from_prior(unet, null_embedding, mode="exact")
    x, t = x_and_t()
    assert torch.equal(model(x, t, torch.randn(2, 77, 32)).sample, unet(x, t, null_embedding.expand(2, -1, -1)).sample)


@torch.no_grad()
def test_calibration_approximates_prior_and_beats_uncalibrated(components, null_embedding):
    """The measured gap (reported in docs/NULLTEXT.md) must be small and must come from calibration."""
    unet = components["unet"]
    model = NullTextUNet.from_prior(unet, null_embedding, scheduler=components["scheduler"])
    blank = NullTextUNet.from_prior(unet, null_embedding)
    for m in blank.modules():
        if isinstance(m, ConstantCrossAttention):
            m.null_text_feature.zero_()
    gaps, blank_gaps = [], []
    for seed, t in [(1, 50), (2, 500), (3, 950)]:
        x, _ = x_and_t(4, seed)
        ref = unet(x, t, null_embedding.expand(4, -1, -1)).sample
        gaps.append(((model(x, t).sample - ref).norm() / ref.norm()).item())
        blank_gaps.append(((blank(x, t).sample - ref).norm() / ref.norm()).item())
    assert max(gaps) < 0.1
    assert max(gaps) < 0.5 * min(blank_gaps)


@torch.no_grad()
def test_calibration_is_reproducible_and_recorded(components, null_embedding):
    a = NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"], prior="tiny")
    b = NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"], prior="tiny")
    for (na, ba), (nb, bb) in zip(a.named_buffers(), b.named_buffers()):
        assert na == nb and torch.equal(ba, bb)
    c = NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"], seed=1)
    assert not all(torch.equal(x, y) for (_, x), (_, y) in zip(a.named_buffers(), c.named_buffers()))
    rec = a.config.calibration
    assert a.config.prior == "tiny"
    assert rec["seed"] == 0 and rec["batch_size"] == 4 and len(rec["timesteps"]) == 10 and rec["null_prompt"] == ""


@torch.no_grad()
def test_calibration_with_clean_latents(components, null_embedding):
    z0 = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    model = NullTextUNet.from_prior(components["unet"], null_embedding, scheduler=components["scheduler"], latents=z0)
    assert model.config.calibration["batch_size"] == 3 and "supplied" in model.config.calibration["latents"]
    with pytest.raises(ValueError, match="scheduler"):
        NullTextUNet.from_prior(components["unet"], null_embedding, latents=z0)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["constant", "exact"])
def test_save_load_roundtrip_safetensors(components, null_embedding, tmp_path, mode):
    model = NullTextUNet.from_prior(components["unet"], null_embedding, mode=mode, prior="some/prior")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["prior"] == "some/prior" and config["mode"] == mode and "calibration" in config
    loaded = NullTextUNet.from_pretrained(tmp_path)
    x, t = x_and_t()
    assert torch.equal(loaded(x, t).sample, model(x, t).sample)


def test_check_compatible_names_the_mismatch(components, null_embedding):
    model = NullTextUNet.from_prior(components["unet"], null_embedding)
    check_compatible(components["unet"], model, "epsilon")
    with pytest.raises(ValueError, match="latent channels"):
        check_compatible(tiny_unet(in_channels=8), model, "epsilon")
    with pytest.raises(ValueError, match="sample size"):
        check_compatible(tiny_unet(sample_size=32), model, "epsilon")
    with pytest.raises(ValueError, match="block_out_channels"):
        check_compatible(tiny_unet(block_out_channels=(32, 32)), model, "epsilon")
    with pytest.raises(ValueError, match="v_prediction"):
        check_compatible(components["unet"], model, "v_prediction")


def test_bad_null_embedding_shape(components):
    with pytest.raises(ValueError, match=r"\(1, L, D\)"):
        NullTextUNet.from_prior(components["unet"], torch.zeros(77, 32))
