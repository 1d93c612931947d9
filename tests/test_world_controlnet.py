"""The emoji world's edge control: `edge_map` rule and `edge_f1` score (fast, no model)."""

import numpy as np
import PIL.Image

from indomain.world.controlnet import control_image, edge_f1, edge_map


def _square(offset: int = 0) -> PIL.Image.Image:
    a = np.full((32, 32, 3), 255, np.uint8)
    a[8 + offset : 24 + offset, 8 + offset : 24 + offset] = 0
    return PIL.Image.fromarray(a)


def test_edge_map_marks_the_outline_only():
    e = edge_map(_square())
    assert e.dtype == bool and e.shape == (32, 32)
    assert e[8, 16] and e[7, 16] and not e[16, 16] and not e[0, 0]
    assert not edge_map(PIL.Image.new("RGB", (32, 32), "white")).any()


def test_edge_map_threshold_ignores_faint_contrast():
    a = np.full((32, 32, 3), 255, np.uint8)
    a[:, 16:] = 250  # contrast 5/255: far below 1/8 of full range
    assert not edge_map(PIL.Image.fromarray(a)).any()


def test_edge_f1_identity_tolerance_and_miss():
    c = control_image(_square())
    assert c.mode == "RGB" and c.size == (32, 32)
    assert edge_f1(c, _square()) == 1.0
    assert edge_f1(edge_map(_square()), _square(1)) == 1.0  # within the 1 px tolerance
    assert edge_f1(edge_map(_square()), _square(5)) < 0.5
    assert edge_f1(edge_map(_square()), PIL.Image.new("RGB", (32, 32), "white")) == 0.0
    assert edge_f1(c, _square().resize((64, 64))) == 1.0  # the generated image is scored at the control's size


def test_shipped_controlnet_fits_the_prior_and_is_small():
    from diffusers import ControlNetModel, UNet2DConditionModel

    from indomain.control import check_control_compatible
    from indomain.world.render import shipped_weights

    folder = shipped_weights("emoji-controlnet")
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20 and (folder / "MODEL_CARD.md").is_file()
    cn = ControlNetModel.from_pretrained(folder)
    check_control_compatible(UNet2DConditionModel.from_pretrained(shipped_weights("emoji-prior") / "unet"), cn, None, 4)
    assert cn.config.conditioning_channels == 3
