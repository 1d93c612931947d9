"""Single-file (A1111 / ComfyUI style) .safetensors priors, opened through diffusers' from_single_file with a local
config: the same images as the diffusers folder they were written from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from indomain.cli import main
from indomain.export import ldm_checkpoint
from indomain.nulltext import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.testing import save_tiny_prior


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    prior = save_tiny_prior(root / "prior")
    pipe = InDomainPipeline.from_pretrained(prior)
    null = pipe.encode_text([""], torch.device("cpu"))
    NullTextUNet.from_prior(pipe.unet, null, num_timesteps=2, batch_size=1).save_pretrained(root / "domain")
    save_file(ldm_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder), root / "tiny-sd.safetensors")
    return prior, root / "domain", root / "tiny-sd.safetensors"


def images(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


def test_single_file_prior_gives_the_images_of_its_folder(world):
    prior, domain, file = world
    from_folder = images(InDomainPipeline.from_pretrained(prior, domain_unet=domain))
    from_file = InDomainPipeline.from_pretrained(file, config=prior, domain_unet=domain)
    assert type(from_file) is InDomainPipeline and from_file.domain_unet is not None
    np.testing.assert_array_equal(images(from_file), from_folder)


def test_generate_reads_a_single_file_prior(world, tmp_path):
    prior, domain, file = world
    common = ["--domain", str(domain), "--num-images", "1", "--steps", "2", "--scheduler", "ddim"]
    assert main(["generate", "--prior", str(prior), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["generate", "--prior", str(file), "--prior-config", str(prior), *common, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "p00_seed000000.png").read_bytes() == (tmp_path / "b" / "p00_seed000000.png").read_bytes()


def test_single_file_rules(world, tmp_path, capsys):
    prior, domain, file = world
    pickle_file = tmp_path / "model.ckpt"
    pickle_file.write_bytes(b"not read")
    assert main(["generate", "--prior", str(pickle_file), "--domain-scale", "0", "--out", str(tmp_path / "o")]) == 2
    assert "only safetensors single files are read" in capsys.readouterr().err
    assert main(["generate", "--prior", str(prior), "--prior-config", str(prior), "--domain-scale", "0",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "--prior-config is for a single-file --prior" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()  # refused before --out is claimed
    with pytest.raises(ValueError, match="--prior-config"):  # offline, no config: nothing to build it from
        InDomainPipeline.from_pretrained(file, local_files_only=True)


def test_export_single_file_with_prior_is_a_whole_checkpoint(world, tmp_path):
    from diffusers import StableDiffusionPipeline

    prior, domain, _ = world
    assert main(["export", str(domain), "--format", "single-file", "--prior", str(prior), "--out", str(tmp_path / "x")]) == 0
    pipe = StableDiffusionPipeline.from_single_file(str(tmp_path / "x" / "domain_unet.safetensors"), config=str(prior),
                                                    local_files_only=True, safety_checker=None)
    model = NullTextUNet.from_pretrained(domain).eval()
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([400])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=torch.randn(1, 77, 32)).sample,
                                   model(x, t).sample, rtol=0, atol=1e-5)
    reference = StableDiffusionPipeline.from_pretrained(prior)
    for name in ("vae", "text_encoder"):
        for key, value in getattr(reference, name).state_dict().items():
            assert torch.equal(getattr(pipe, name).state_dict()[key].reshape(value.shape), value), (name, key)


def test_a_lora_domain_exports_whole_and_fused(world, tmp_path):
    import copy

    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from indomain.loading import save_lora
    from indomain.train import LORA_TARGETS

    prior, _, _ = world
    pipe = InDomainPipeline.from_pretrained(prior)
    model = NullTextUNet.from_prior(copy.deepcopy(pipe.unet), pipe.encode_text([""], torch.device("cpu")),
                                    num_timesteps=2, batch_size=1).eval()
    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in model.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    save_lora(model, tmp_path / "lora")
    assert main(["export", str(tmp_path / "lora"), "--format", "single-file", "--prior", str(prior),
                 "--out", str(tmp_path / "x")]) == 0
    whole = StableDiffusionPipeline.from_single_file(str(tmp_path / "x" / "domain_unet.safetensors"), config=str(prior),
                                                     local_files_only=True, safety_checker=None)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([300])
    with torch.no_grad():
        torch.testing.assert_close(whole.unet(x, t, encoder_hidden_states=torch.randn(1, 77, 32)).sample,
                                   model(x, t).sample, rtol=0, atol=1e-5)


def realigned(pipe):
    """The pipeline with every model's weights copied into fresh memory. CPU matmul kernels round differently on
    differently aligned buffers, and weights mmap'd from a folder's files lie at other offsets than the ones
    from_single_file builds (SD3: images 1e-6 apart with equal weights, exactly equal after this)."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for param in module.parameters():
                param.data = param.data.clone()
    domain = pipe.domain_model
    if domain is not None:
        for param in domain.parameters():
            param.data = param.data.clone()
    return pipe


@pytest.fixture(scope="module", params=["sd2", "sdxl", "sd3"])
def family_world(request, tmp_path_factory):
    """A tiny SD 2.x / SDXL / SD3 prior folder, the same prior as one original-layout .safetensors, and a domain model.
    "sd2" is the tiny SD prior with its text encoder in SD 2.x's OpenCLIP layout (``cond_stage_model.model.``).

    The second text encoder is 48 wide: diffusers' single-file loader tells SDXL's / SD3's two CLIPs apart by their
    width alone (real checkpoints: 768 vs 1280), so two equally wide tiny encoders would both load CLIP-L."""
    from diffusers import StableDiffusion3Pipeline

    from indomain import InDomainAutoPipeline, NullTextTransformer
    from indomain.export import (ldm_unet_state_dict, ldm_vae_state_dict, open_clip_state_dict, sd3_checkpoint,
                                 sdxl_checkpoint)
    from indomain.testing import tiny_sd3_components

    family = request.param
    root = tmp_path_factory.mktemp(family)
    if family == "sd3":
        parts = tiny_sd3_components(root / "tok", width_2=48)
        with torch.no_grad():  # the SD3 single-file loader gives CLIP-L an identity projection (the file has none)
            parts["text_encoder"].text_projection.weight.copy_(torch.eye(32))
        StableDiffusion3Pipeline(**parts).save_pretrained(root / "prior", safe_serialization=True)
        prior = root / "prior"
    else:
        prior = save_tiny_prior(root / "prior", family="sd" if family == "sd2" else "sdxl", width_2=48)
    pipe = InDomainAutoPipeline.from_pretrained(prior)
    null = pipe.encode_negative(None, 1, "cpu") if family != "sd2" else None
    if family == "sd3":
        NullTextTransformer.from_prior(pipe.transformer, null["text"], null["pooled"]).save_pretrained(root / "domain")
        state = sd3_checkpoint(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    elif family == "sd2":
        NullTextUNet.from_prior(pipe.unet, pipe.encode_text([""], torch.device("cpu")), num_timesteps=2,
                                batch_size=1).save_pretrained(root / "domain")
        state = {**ldm_unet_state_dict(pipe.unet), **ldm_vae_state_dict(pipe.vae),
                 **open_clip_state_dict(pipe.text_encoder, prefix="cond_stage_model.model.")}
    else:
        NullTextUNet.from_prior(pipe.unet, null["text"], null_pooled=null["pooled"], num_timesteps=2,
                                batch_size=1).save_pretrained(root / "domain")
        state = sdxl_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    save_file(state, root / f"tiny-{family}.safetensors")
    return family, prior, root / "domain", root / f"tiny-{family}.safetensors", config_only(prior, root / "config")


def config_only(folder, dest):
    """A copy of a pipeline folder without its weights: what a single file is opened with. Every weight must then
    come from the file (a component diffusers found missing there would fail to load instead of being taken from
    the folder)."""
    import shutil

    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


def test_single_file_sd2_sdxl_and_sd3_priors_give_the_images_of_their_folder(family_world):
    from indomain import InDomainAutoPipeline, InDomainSD3Pipeline, InDomainXLPipeline

    family, prior, domain, file, config = family_world
    cls = {"sd2": InDomainPipeline, "sdxl": InDomainXLPipeline, "sd3": InDomainSD3Pipeline}[family]
    folder = realigned(InDomainAutoPipeline.from_pretrained(prior, domain_unet=domain))
    single = realigned(InDomainAutoPipeline.from_pretrained(file, config=config, domain_unet=domain))
    assert type(single) is cls and single.domain_model is not None
    names = ("vae", "text_encoder", "unet") if family == "sd2" else ("vae", "text_encoder", "text_encoder_2",
                                                                     "unet" if family == "sdxl" else "transformer")
    for name in names:
        want, got = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert want.keys() == got.keys(), name
        for key, value in want.items():
            assert torch.equal(got[key].reshape(value.shape), value), (name, key)
    for scale in (0.0, 2.0):  # the prior alone, and with the domain model
        def run(pipe):
            pipe.set_progress_bar_config(disable=True)
            return pipe("a cat", num_inference_steps=2, domain_guidance_scale=scale, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images
        np.testing.assert_array_equal(run(single), run(folder))


def test_a_single_file_that_leaves_weights_unfilled_is_refused(tmp_path):
    """Two equally wide SDXL text encoders: diffusers loads CLIP-L's weights into both and leaves the second one's
    projection on the meta device; the loader says so instead of failing at the first step."""
    from indomain import InDomainAutoPipeline
    from indomain.export import sdxl_checkpoint

    prior = save_tiny_prior(tmp_path / "prior", family="sdxl")
    pipe = InDomainAutoPipeline.from_pretrained(prior)
    save_file(sdxl_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2), tmp_path / "xl.safetensors")
    with pytest.raises(ValueError, match="no weights for text_encoder_2"):
        InDomainAutoPipeline.from_pretrained(tmp_path / "xl.safetensors", config=prior)


@pytest.fixture(scope="module")
def control_world(world, tmp_path_factory):
    """A ControlNet (random zero convolutions, so that it steers) and a control UNet, each as a diffusers folder and
    as one original-layout .safetensors file, plus a control image."""
    import PIL.Image
    from diffusers import ControlNetModel, UNet2DConditionModel

    from indomain.export import ldm_controlnet_state_dict, ldm_unet_state_dict
    from indomain.testing import tiny_unet

    prior = world[0]
    root = tmp_path_factory.mktemp("control")
    net = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(prior / "unet"),
                                    conditioning_embedding_out_channels=(16, 32))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.normal_(0, 0.05)
    net.save_pretrained(root / "cn")
    save_file(ldm_controlnet_state_dict(net), root / "control_tiny.safetensors")
    custom = tiny_unet(seed=7)
    custom.save_pretrained(root / "custom")
    save_file(ldm_unet_state_dict(custom), root / "custom.safetensors")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "c.png")
    return root


def test_single_file_controlnet_and_control_model_load_their_folders_weights(world, control_world):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from indomain.loading import load_model

    prior, root = world[0], control_world
    pairs = [(ControlNetModel, "--controlnet", root / "cn", root / "control_tiny.safetensors", root / "cn"),
             (UNet2DConditionModel, "--control-model", root / "custom", root / "custom.safetensors", prior)]
    for cls, flag, folder, file, config in pairs:  # config: a model folder, or a pipeline folder (its unet/)
        want = load_model(cls, folder, flag).state_dict()
        got = load_model(cls, file, flag, config=config).state_dict()
        assert want.keys() == got.keys(), flag
        for key, value in want.items():
            assert torch.equal(got[key], value), (flag, key)


def test_generate_reads_a_single_file_controlnet_and_control_model(world, control_world, tmp_path, capsys):
    import PIL.Image

    prior, domain, _ = world
    root = control_world
    base = ["generate", "--prior", str(prior), "--domain", str(domain), "--num-images", "1", "--steps", "2",
            "--scheduler", "ddim", "--prompt", "a cat", "--control-image", str(root / "c.png")]
    folders = ["--controlnet", str(root / "cn"), "--control-model", str(root / "custom")]
    files = ["--controlnet", str(root / "control_tiny.safetensors"), "--controlnet-config", str(root / "cn"),
             "--control-model", str(root / "custom.safetensors"), "--control-model-config", str(prior)]
    plain = base[:-2] + ["--out", str(tmp_path / "plain")]  # no control: shows that the control models steer
    for argv in (base + folders + ["--out", str(tmp_path / "a")], base + files + ["--out", str(tmp_path / "b")], plain):
        assert main(argv) == 0, capsys.readouterr().err
    a, b, c = (np.asarray(PIL.Image.open(tmp_path / d / "p00_seed000000.png"), dtype=int) for d in ("a", "b", "plain"))
    # equal weights (test above); the pixels may still differ by one level: CPU kernels round differently on
    # differently aligned weight buffers (mmap'd folder files vs. tensors built from the single file)
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - c).max() > 10


def test_single_file_control_rules(world, control_world, tmp_path, capsys):
    prior, _, _ = world
    root = control_world
    (tmp_path / "control.pth").write_bytes(b"not read")
    base = ["generate", "--prior", str(prior), "--domain-scale", "0", "--steps", "2", "--num-images", "1",
            "--control-image", str(root / "c.png")]
    cases = {
        "--controlnet .*control.pth: a single-file model that is not .safetensors":
            ["--controlnet", str(tmp_path / "control.pth"), "--controlnet-config", str(root / "cn")],
        "pass --controlnet-config DIR": ["--controlnet", str(root / "control_tiny.safetensors")],
        "--controlnet-config is for a single-file --controlnet": ["--controlnet", str(root / "cn"),
                                                                  "--controlnet-config", str(root / "cn")],
        "--control-model-config is for a single-file --control-model":
            ["--controlnet", str(root / "cn"), "--control-model", str(root / "custom"), "--control-model-config", str(prior)],
        "--adapter .*cannot be read from a single file": ["--adapter", str(root / "control_tiny.safetensors")],
        "--controlnet .*cannot be loaded as a single-file ControlNetModel": ["--controlnet", str(root / "custom.safetensors"),
            "--controlnet-config", str(root / "cn")],
    }
    for i, (message, argv) in enumerate(cases.items()):
        assert main(base + argv + ["--out", str(tmp_path / f"bad{i}")]) == 2, message
        err = capsys.readouterr().err
        assert __import__("re").search(message, err), (message, err)
        assert "Traceback" not in err and not (tmp_path / f"bad{i}").exists()


def test_train_on_a_single_file_prior_gives_the_weights_of_its_folder(world, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import load_file

    prior, _, file = world
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((40, 36, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    common = ["--images", str(images), "--resolution", "32", "--train-batch-size", "2", "--max-train-steps", "2",
              "--learning-rate", "1e-3", "--validation-steps", "2", "--num-validation-images", "1",
              "--validation-inference-steps", "2"]
    for bad, message in (([str(file)], "is a single file: pass --prior-config DIR"),
                         ([str(prior), "--prior-config", str(prior)], "--prior-config is for a single-file --prior")):
        assert main(["train", "--prior", *bad, *common, "--output", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["train", "--prior", str(prior), *common, "--output", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    config = config_only(prior, tmp_path / "config")  # every weight from the file
    assert main(["train", "--prior", str(file), "--prior-config", str(config), *common,
                 "--output", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    want = load_file(tmp_path / "a" / "raw" / "diffusion_pytorch_model.safetensors")
    got = load_file(tmp_path / "b" / "raw" / "diffusion_pytorch_model.safetensors")
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    prior_unet = load_file(prior / "unet" / "diffusion_pytorch_model.safetensors")
    trained = [k for k in want if k.removeprefix("unet.") in prior_unet]
    assert trained and any(not torch.equal(want[k], prior_unet[k.removeprefix("unet.")]) for k in trained)  # it trained
    assert json.loads((tmp_path / "b" / "train_config.json").read_text())["prior_config"] == str(config)
    assert (tmp_path / "b" / "samples" / "step0000002_uncond.png").is_file()  # validation opened the single file
    assert f'from_pretrained("{file}", config="{config}", ' in (tmp_path / "b" / "README.md").read_text()


def test_evaluate_reads_a_single_file_prior(world, tmp_path, capsys):
    import PIL.Image

    prior, domain, file = world
    common = ["--domain", str(domain), "--num-images", "2", "--batch-size", "2", "--steps", "2", "--scheduler", "ddim",
              "--domain-scales", "1.5", "--guidance-scales", "0"]
    assert main(["evaluate", "--prior", str(prior), *common, "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    config = config_only(prior, tmp_path / "config")
    assert main(["evaluate", "--prior", str(file), "--prior-config", str(config), *common,
                 "--out", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    grids = [sorted((tmp_path / d / "grids").glob("*.png")) for d in ("a", "b")]
    assert len(grids[0]) == 1 and [g.name for g in grids[0]] == [g.name for g in grids[1]]
    a, b = (np.asarray(PIL.Image.open(g[0]), dtype=int) for g in grids)
    assert np.abs(a - b).max() <= 1  # equal weights; CPU rounding may move a pixel one level (see realigned)
    assert main(["evaluate", "--prior", str(prior), "--prior-config", str(prior), *common,
                 "--out", str(tmp_path / "c")]) == 2
    assert "--prior-config is for a single-file --prior" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["tune", "--domain", "d"], ["3d", "--prompt", "apple"]], ids=lambda c: c[0])
def test_prior_config_goes_with_a_single_file_prior(world, tmp_path, capsys, command):
    prior, _, _ = world
    argv = [command[0], "--prior", str(prior), "--prior-config", str(prior), *command[1:], "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--prior-config is for a single-file --prior" in capsys.readouterr().err and not (tmp_path / "o").exists()
