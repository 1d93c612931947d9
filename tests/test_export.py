"""`indomain export` and the plain-loader guard: domain models as files that diffusers, ComfyUI and A1111 read."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel

from indomain.cli import main
from indomain.export import ExportError, plain_unet
from indomain.nulltext import NullTextTransformer, NullTextUNet
from indomain.testing import tiny_sd3_components, tiny_sdxl_components, tiny_unet


def domain_model(seed: int = 0) -> NullTextUNet:
    torch.manual_seed(seed)
    return NullTextUNet.from_prior(tiny_unet(seed=seed), torch.randn(1, 77, 32), num_timesteps=2, batch_size=1).eval()


def inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.tensor([10, 700][:batch])


@pytest.mark.parametrize("text_scale", [0.0, 1.0, 1e3])
def test_plain_unet_predicts_exactly_what_the_domain_model_does_for_any_text(text_scale):
    model = domain_model()
    plain = plain_unet(model)
    assert type(plain) is UNet2DConditionModel
    x, t = inputs()
    text = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2)) * text_scale
    with torch.no_grad():
        expected = model(x, t).sample
        got = plain(x, t, encoder_hidden_states=text).sample
    assert torch.equal(got, expected)  # bit for bit: the zeroed attention adds an exact zero to the bias
    # the constant sits in the output bias; q/k/v/out weights are zero and norm2 is the identity LayerNorm
    attn2 = plain.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    block = model.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert torch.equal(attn2.to_out[0].bias, block.attn2.null_text_feature)
    assert not attn2.to_q.weight.any() and not attn2.to_k.weight.any() and not attn2.to_out[0].weight.any()


def test_plain_sdxl_unet_holds_the_pooled_text_constant_too():
    parts = tiny_sdxl_components()
    torch.manual_seed(0)
    model = NullTextUNet.from_prior(parts["unet"], torch.randn(1, 77, 64), null_pooled=torch.zeros(1, 32),
                                  num_timesteps=2, batch_size=1).eval()
    plain = plain_unet(model)
    x, t = inputs()
    time_ids = torch.tensor([[32, 32, 0, 0, 32, 32]] * 2, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        expected = model(x, t, added_cond_kwargs={"time_ids": time_ids}).sample
        got = plain(x, t, encoder_hidden_states=torch.randn(2, 9, 64, generator=g),
                    added_cond_kwargs={"time_ids": time_ids, "text_embeds": torch.randn(2, 32, generator=g)}).sample
    assert torch.equal(got, expected)


def test_exact_mode_and_sd3_are_refused_with_the_reason():
    exact = NullTextUNet.from_prior(tiny_unet(), torch.randn(1, 77, 32), mode="exact")
    with pytest.raises(ExportError, match="mode='exact'"):
        plain_unet(exact)
    parts = tiny_sd3_components()
    sd3 = NullTextTransformer.from_prior(parts["transformer"], torch.randn(1, 77, 64), torch.randn(1, 64))
    with pytest.raises(ExportError, match="SD3"):
        plain_unet(sd3)


def test_diffusers_plain_loaders_refuse_a_domain_folder_instead_of_loading_random_weights(tmp_path):
    model = domain_model()
    model.save_pretrained(tmp_path / "domain")
    with pytest.raises(ValueError, match="indomain domain model"):
        UNet2DConditionModel.from_pretrained(tmp_path / "domain")
    with pytest.raises(ValueError, match="indomain domain model"):
        SD3Transformer2DModel.from_pretrained(tmp_path / "domain")
    again = NullTextUNet.from_pretrained(tmp_path / "domain")  # our loader drops the guard keys
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_export_command_writes_a_diffusers_folder_and_a_single_file(tmp_path, capsys):
    model = domain_model(seed=4)
    model.save_pretrained(tmp_path / "domain")
    x, t = inputs()
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = model(x, t).sample

    assert main(["export", str(tmp_path / "domain"), "--out", str(tmp_path / "plain")]) == 0
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, encoder_hidden_states=text).sample, expected, rtol=0, atol=1e-5)
    record = json.loads((tmp_path / "plain" / "export.json").read_text(), parse_constant=pytest.fail)
    assert record["format"] == "diffusers" and record["class"] == "NullTextUNet"

    assert main(["export", str(tmp_path / "domain"), "--out", str(tmp_path / "single"), "--format", "single-file"]) == 0
    assert "domain_unet.safetensors" in capsys.readouterr().out
    # diffusers' own single-file loader (the LDM -> diffusers conversion ComfyUI/A1111 files go through), no hub
    single = UNet2DConditionModel.from_single_file(str(tmp_path / "single" / "domain_unet.safetensors"),
                                                   config=str(tmp_path / "single"), subfolder="",
                                                   local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(single(x, t, encoder_hidden_states=text).sample, expected, rtol=0, atol=1e-5)


def test_export_of_an_sd3_domain_is_one_error_line(tmp_path, capsys):
    parts = tiny_sd3_components()
    NullTextTransformer.from_prior(parts["transformer"], torch.randn(1, 77, 64), torch.randn(1, 64)).save_pretrained(
        tmp_path / "sd3")
    assert main(["export", str(tmp_path / "sd3"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SD3" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- LoRA domain models


@pytest.fixture
def lora_domain(tmp_path):
    """A LoRA null-text domain model saved by `save_lora`, its plain null-text base, and the model itself."""
    import copy

    from peft import LoraConfig

    from indomain.loading import save_lora
    from indomain.train import LORA_TARGETS

    model = domain_model(seed=5)
    base = plain_unet(copy.deepcopy(model))
    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; a trained adapter is not
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    save_lora(model, tmp_path / "lora-domain")
    return tmp_path / "lora-domain", base, model


def plain_pipeline(unet):
    from diffusers import StableDiffusionPipeline

    from indomain.testing import tiny_sd_components

    parts = tiny_sd_components()
    parts["unet"] = unet
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_lora_domain_loads_with_diffusers_load_lora_weights(lora_domain):
    from safetensors import safe_open

    folder, base, model = lora_domain
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert all(k.startswith("unet.") for k in f.keys())
    x, t = inputs()
    text = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = model(x, t).sample
    pipe = plain_pipeline(base)
    pipe.load_lora_weights(str(folder))  # the run folder as it is, beside null_text_buffers.safetensors
    assert pipe.get_list_adapters()["unet"]
    with torch.no_grad():
        got = pipe.unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # indomain's own loader reads the prefixed file
    from indomain.loading import load_lora

    with torch.no_grad():
        torch.testing.assert_close(load_lora(folder, tiny_unet(seed=5))(x, t).sample, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt, file", [("kohya", "domain_lora.safetensors"), ("lora", "pytorch_lora_weights.safetensors")])
def test_lora_export_round_trips_through_load_lora_weights(lora_domain, tmp_path, fmt, file):
    folder, base, model = lora_domain
    assert main(["export", str(folder), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    if fmt == "kohya":
        from safetensors.torch import load_file

        keys = list(load_file(tmp_path / fmt / file))
        assert keys and all(k.startswith("lora_unet_") for k in keys) and any(k.endswith(".alpha") for k in keys)
    x, t = inputs()
    with torch.no_grad():
        expected = model(x, t).sample
    pipe = plain_pipeline(base)
    pipe.load_lora_weights(str(tmp_path / fmt), weight_name=file)
    with torch.no_grad():
        got = pipe.unet(x, t, encoder_hidden_states=torch.randn(2, 7, 32)).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_sd3_lora_domain_is_saved_under_transformer_and_reloads(tmp_path):
    from peft import LoraConfig

    from indomain.loading import load_lora, lora_prefix, save_lora

    parts = tiny_sd3_components()
    model = NullTextTransformer.from_prior(parts["transformer"], torch.randn(1, 77, 64), torch.randn(1, 64))
    model.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    save_lora(model, tmp_path / "sd3-lora")
    assert lora_prefix(tmp_path / "sd3-lora" / "pytorch_lora_weights.safetensors") == "transformer"  # SD3's loader prefix
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(load_lora(tmp_path / "sd3-lora", parts["transformer"])(x, t).sample,
                                   model(x, t).sample, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_original_sd_layout_round_trips_through_from_single_file(family, tmp_path):
    from safetensors.torch import save_file

    from indomain.export import ldm_unet_state_dict

    unet = tiny_unet() if family == "sd" else tiny_sdxl_components()["unet"]  # SDXL: label_emb, 2 text encoders' dims
    save_file(ldm_unet_state_dict(unet), tmp_path / "unet.safetensors")
    unet.save_config(tmp_path)
    back = UNet2DConditionModel.from_single_file(str(tmp_path / "unet.safetensors"), config=str(tmp_path), subfolder="",
                                                 local_files_only=True)
    ours, theirs = unet.state_dict(), back.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
