"""In-domain editing: SDEdit equals diffusers' img2img at domain weight 0, inversion reconstructs, masks keep."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from indomain import NullTextUNet
from indomain.editing import InDomainImg2ImgPipeline
from indomain.testing import tiny_unet


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    smooth = rng.random((4, 4, 3)).repeat(8, 0).repeat(8, 1)  # blocky, so the tiny VAE has structure to keep
    return Image.fromarray((smooth * 255).astype("uint8"))


@pytest.fixture
def pipe(components, null_embedding):
    domain = NullTextUNet.from_prior(tiny_unet(seed=3), null_embedding, scheduler=components["scheduler"])
    p = InDomainImg2ImgPipeline(**components, domain_unet=domain)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler])
@pytest.mark.parametrize("generators", [False, True])
def test_sdedit_at_domain_weight_zero_equals_diffusers_img2img(components, pipe, picture, scheduler_cls, generators):
    scheduler = scheduler_cls.from_config(components["scheduler"].config)
    sd = StableDiffusionImg2ImgPipeline(**{**components, "scheduler": scheduler}, safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler
    g = (lambda: [gen(1), gen(2)]) if generators else (lambda: gen(0))
    kw = dict(image=picture, strength=0.6, num_inference_steps=5, guidance_scale=4.0, output_type="np")
    ref = sd(["a red apple", "a dog"], negative_prompt=["blurry", ""], generator=g(), **kw).images
    out = pipe(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=0, generator=g(), **kw).images
    assert abs(ref - out).max() <= 1e-5
    edited = pipe(["a red apple", "a dog"], negative_prompt=["blurry", ""], domain_guidance_scale=2.0, generator=g(), **kw).images
    assert abs(ref - edited).max() > 1e-3  # the domain term edits


def test_inversion_then_reconstruction_returns_the_input():
    """With every weight at 0, inversion and regeneration use the same prediction, eps_prior(x, ∅); what is left is
    DDIM's inversion error. Stated tolerance, on the shipped emoji prior (a trained model: a random tiny UNet is no
    denoiser and inverts badly), 25 steps, full strength: mean abs error <= 0.01 and max <= 0.1, for latents of
    mean abs ~0.94. Measured: 0.0048 / 0.044 with 3 fixed-point passes per step, 0.069 / 0.28 with plain inversion."""
    from indomain.world.prior import emoji_prior_dir
    from indomain.world.render import get_emoji, render

    pipe = InDomainImg2ImgPipeline.from_pretrained(emoji_prior_dir())
    pipe.set_progress_bar_config(disable=True)
    picture = render(get_emoji("red apple"), "noto", 32)
    source = pipe.encode_pixels(pipe.image_processor.preprocess(picture), 1, None, sample=False)
    kw = dict(image=picture, method="invert", strength=1.0, num_inference_steps=25, guidance_scale=0,
              domain_guidance_scale=0, output_type="latent")
    err = (pipe(**kw).images - source).abs()
    assert err.mean() <= 0.01 and err.max() <= 0.1, (err.mean(), err.max())
    pipe.inversion_fixed_point_steps = 0
    plain = (pipe(**kw).images - source).abs()
    assert plain.mean() > 3 * err.mean()  # the fixed-point passes are what makes it tight
    edited = pipe(**{**kw, "guidance_scale": 3.0}, prompt="grinning face").images
    assert (edited - source).abs().mean() > 10 * err.mean()  # and a control prompt moves it


@pytest.mark.parametrize("method", ["sdedit", "invert"])
def test_mask_keeps_the_unmasked_region(pipe, picture, method):
    mask = np.zeros((32, 32), dtype="uint8")
    mask[:, 16:] = 255  # regenerate the right half
    source = pipe.encode_pixels(pipe.image_processor.preprocess(picture), 1, gen(0), sample=method == "sdedit")
    out = pipe("a cat", image=picture, mask_image=Image.fromarray(mask), method=method, strength=0.8,
               num_inference_steps=6, generator=gen(0), output_type="latent").images
    assert torch.equal(out[..., :8], source[..., :8])  # the kept half is the source latent itself
    assert (out[..., 8:] - source[..., 8:]).abs().max() > 1e-2  # the masked half was regenerated


def test_bad_inputs_are_named(pipe, picture):
    with pytest.raises(ValueError, match="strength"):
        pipe(image=picture, strength=0.0)
    with pytest.raises(ValueError, match="method"):
        pipe(image=picture, method="magic")
    with pytest.raises(ValueError, match="image is required"):
        pipe("a cat")


def test_edit_command_writes_edits_grid_and_record(tmp_path, components, null_embedding, picture):
    import json

    from indomain.cli import main
    from indomain.testing import save_tiny_prior

    prior = save_tiny_prior(tmp_path / "prior")
    domain = NullTextUNet.from_prior(tiny_unet(seed=3), null_embedding, scheduler=components["scheduler"])
    domain.save_pretrained(tmp_path / "domain")
    images = tmp_path / "images"
    images.mkdir()
    picture.save(images / "a.png")
    picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / "b.png")
    mask = np.zeros((32, 32), dtype="uint8")
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for method, extra in [("sdedit", []), ("invert", ["--mask", tmp_path / "mask.png"])]:
        out = tmp_path / method
        argv = ["edit", "--prior", prior, "--domain", tmp_path / "domain", "--image", images, "--prompt", "a cat",
                "--strength", 0.5, "--steps", 4, "--method", method, "--out", out, *extra]
        assert main([str(a) for a in argv]) == 0
        record = json.loads((out / "settings.json").read_text())
        assert [i["file"] for i in record["images"]] == ["0000_a.png", "0001_b.png"]
        assert record["settings"]["method"] == method
        assert Image.open(out / "grid.png").size == (2 * 34 + 2, 2 * 34 + 2)  # before above after, 2 columns
    assert main(["edit", "--prior", str(prior), "--image", str(images), "--strength", "1.5", "--domain-scale", "0",
                 "--out", str(tmp_path / "bad")]) == 2


def test_several_images_without_a_prompt_edit_one_each(pipe, picture):
    flipped = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = pipe(image=[picture, flipped], strength=0.5, num_inference_steps=4, generator=[gen(0), gen(1)],
               output_type="np").images
    single = pipe(image=flipped, strength=0.5, num_inference_steps=4, generator=gen(1), output_type="np").images
    assert out.shape == (2, 32, 32, 3) and abs(out[1] - single[0]).max() <= 1e-5


def test_the_cli_offers_every_editing_method():
    from indomain.generate import EDIT_METHODS
    from indomain.editing import METHODS

    assert EDIT_METHODS == METHODS
