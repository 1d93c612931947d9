"""Spatial control in the domain: ControlNet and T2I-Adapter residuals for the sampling core of `InDomainPipeline`.

A `SpatialControl` holds one call's prepared control images (one row per image) and hands every model branch
the residuals for *its* batch: ``residuals(x, t, emb)`` tiles the control rows to the branch's rows (MultiGuidance
concatenates the conditions of one model along the batch axis), so the ControlNet sees the same ``x_t``, ``t`` and
text as the UNet it steers, as in `StableDiffusionControlNetPipeline`. The T2I-Adapter's features do not depend on
``x_t`` and are computed once per call, as in `StableDiffusionAdapterPipeline`.

Routing: the prior's branches (unconditional and conditional) always get the residuals; the domain branch only
with ``to_domain=True``. Window: the residuals are applied at the steps where diffusers' ControlNet window rule
``start <= i / N`` and ``(i + 1) / N <= end`` holds (the same arguments as the control text terms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import MultiAdapter
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

# PIL modes whose values do not fit 8 bits: converting them to RGB clips (a 16-bit depth map becomes white)
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def as_multi_controlnet(controlnet: Any) -> Any:
    """A list or tuple of ControlNets becomes diffusers' `MultiControlNetModel`, as diffusers' pipeline does."""
    return MultiControlNetModel(list(controlnet)) if isinstance(controlnet, (list, tuple)) else controlnet


def controlnets(controlnet: Any) -> list[Any]:
    return list(controlnet.nets) if isinstance(controlnet, MultiControlNetModel) else [controlnet]


def adapters(adapter: Any) -> list[Any]:
    return list(adapter.adapters) if isinstance(adapter, MultiAdapter) else [adapter]


def check_control_compatible(unet: Any, controlnet: Any, adapter: Any, vae_scale_factor: int) -> None:
    """Refuse a ControlNet or T2I-Adapter built for another architecture than the prior UNet, naming the mismatch."""
    prior = unet.config
    for i, net in enumerate(controlnets(controlnet) if controlnet is not None else []):
        c = net.config
        name = f"controlnet[{i}]" if isinstance(controlnet, MultiControlNetModel) else "controlnet"
        for key in ("block_out_channels", "cross_attention_dim", "in_channels"):
            ours, theirs = getattr(prior, key), getattr(c, key)
            ours, theirs = (tuple(ours), tuple(theirs)) if isinstance(ours, (list, tuple)) else (ours, theirs)
            if ours != theirs:
                raise ValueError(
                    f"{name} does not fit this prior: its {key} is {theirs}, the prior UNet's is {ours}; "
                    "it was trained for another architecture (e.g. SDXL or SD 2.x against an SD 1.x prior)"
                )
        factor = 2 ** (len(c.conditioning_embedding_out_channels) - 1)
        if factor != vae_scale_factor:
            raise ValueError(
                f"{name} downsamples its control image by {factor}, but this prior's VAE by {vae_scale_factor}: "
                "it was trained for another architecture"
            )
    for i, a in enumerate(adapters(adapter) if adapter is not None else []):
        name = f"adapter[{i}]" if isinstance(adapter, MultiAdapter) else "adapter"
        channels = tuple(a.config.channels)
        if channels != tuple(prior.block_out_channels):
            raise ValueError(
                f"{name} does not fit this prior: its channels are {channels}, the prior UNet's block_out_channels "
                f"are {tuple(prior.block_out_channels)}; it was trained for another architecture"
            )


def _check_mode(image: Any, what: str) -> None:
    for im in image if isinstance(image, (list, tuple)) else [image]:
        if isinstance(im, PIL.Image.Image) and im.mode in _WIDE_MODES:
            raise ValueError(
                f"{what} has PIL mode {im.mode!r} (16-bit or float); convert it to 8 bits first (mode 'L' or 'RGB', "
                "e.g. a depth map scaled to 0-255), since converting it to RGB would clip it"
            )


def _size(image: Any) -> tuple[int, int]:
    im = image[0] if isinstance(image, (list, tuple)) else image
    if isinstance(im, PIL.Image.Image):
        return im.height, im.width
    return tuple(np.shape(im)[-2:]) if isinstance(im, torch.Tensor) else tuple(np.shape(im)[-3:-1])


def check_aspect(image: Any, height: int, width: int, what: str) -> None:
    """Refuse an image whose aspect ratio differs from the output's (by more than 2%): resizing would stretch it."""
    h, w = _size(image)
    if abs(h * width - w * height) > max(h, w) * max(height, width) * 0.02:
        raise ValueError(
            f"{what} is {w}x{h} but the output is {width}x{height}: a different aspect ratio would stretch it; "
            "crop or pad it to the output's shape, or pass height/width that match it"
        )


def default_size(image: Any, multiple: int) -> tuple[int, int]:
    """The output size a control image implies (the first image of a list), rounded down to ``multiple``."""
    while isinstance(image, (list, tuple)):
        image = image[0]
    h, w = _size(image)
    return h // multiple * multiple, w // multiple * multiple


def _rows(image: torch.Tensor, n: int, per_prompt: int, what: str) -> torch.Tensor:
    """One row per output image: a single control image is shared; one per prompt is repeated per image."""
    if image.shape[0] == 1:
        return image.repeat_interleave(n, dim=0)
    if image.shape[0] * per_prompt == n:
        return image.repeat_interleave(per_prompt, dim=0)
    raise ValueError(f"got {image.shape[0]} {what}s for {n // per_prompt} prompt(s): pass 1 or one per prompt")


def prepare_controlnet_images(
    controlnet: Any, image: Any, height: int, width: int, n: int, per_prompt: int, vae_scale_factor: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """diffusers' ``prepare_image`` for each ControlNet: RGB in [0, 1] (no normalising), resized to the output,
    one row per output image; a MultiControlNet takes a list with one image (or list of images) per net."""
    nets = controlnets(controlnet)
    if isinstance(controlnet, MultiControlNetModel):
        if not isinstance(image, (list, tuple)) or len(image) != len(nets):
            raise ValueError(f"a MultiControlNet of {len(nets)} nets needs a list of {len(nets)} control images")
        per_net = list(image)
    else:
        per_net = [image]
    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True, do_normalize=False)
    out = []
    for i, (net, im) in enumerate(zip(nets, per_net)):
        what = f"control image {i}" if len(nets) > 1 else "control image"
        _check_mode(im, what)
        check_aspect(im, height, width, what)
        pixels = processor.preprocess(im, height=height, width=width).to(dtype=torch.float32)
        channels = net.config.conditioning_channels
        if pixels.shape[1] != channels:
            raise ValueError(f"{what} has {pixels.shape[1]} channels; this ControlNet takes {channels} (RGB)")
        out.append(_rows(pixels, n, per_prompt, what).to(device=device, dtype=net.dtype))
    return out


def prepare_adapter_state(
    adapter: Any, image: Any, scale: float | Sequence[float], height: int, width: int, n: int, per_prompt: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """The T2I-Adapter's features for the whole call, as `StableDiffusionAdapterPipeline` computes them (PIL images
    resized with Lanczos, values in [0, 1], channels as given: mode 'L' for a one-channel adapter), times ``scale``."""
    nets = adapters(adapter)
    multi = isinstance(adapter, MultiAdapter)
    if multi and (not isinstance(image, (list, tuple)) or len(image) != len(nets)):
        raise ValueError(f"a MultiAdapter of {len(nets)} adapters needs a list of {len(nets)} control images")
    inputs = []
    for i, (net, im) in enumerate(zip(nets, image if multi else [image])):
        what = f"adapter image {i}" if multi else "adapter image"
        _check_mode(im, what)
        check_aspect(im, height, width, what)
        if isinstance(im, torch.Tensor):
            pixels = im if im.ndim == 4 else im[None]
        else:
            ims = im if isinstance(im, (list, tuple)) else [im]
            arrays = [np.asarray(x.resize((width, height), resample=PIL.Image.Resampling.LANCZOS)) for x in ims]
            arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
            pixels = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        expected = net.config.in_channels
        if pixels.shape[1] != expected:
            raise ValueError(f"{what} has {pixels.shape[1]} channel(s); this adapter takes {expected} "
                             f"({'mode L' if expected == 1 else 'RGB'})")
        if tuple(pixels.shape[-2:]) != (height, width):
            raise ValueError(f"{what} tensor is {tuple(pixels.shape[-2:])}; the output is {(height, width)}")
        inputs.append(pixels.to(device=device, dtype=adapter.dtype))
    if multi:
        scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * len(nets)
        state = adapter(inputs, scales)
    else:
        state = [v * scale for v in adapter(inputs[0])]
    return [_rows(v, n, per_prompt, "adapter image") for v in state]


@dataclass
class SpatialControl:
    """One call's spatial control: the residuals every branch of the sampling core adds to its UNet."""

    controlnet: Any  # ControlNetModel, MultiControlNetModel or None
    images: list[torch.Tensor]  # per ControlNet: (n, C, H, W), one row per output image
    scales: list[float]  # per ControlNet
    adapter_state: list[torch.Tensor] | None  # the T2I-Adapter's features (scaled), one row per output image
    window: tuple[float, float] = (0.0, 1.0)
    to_domain: bool = False

    def active(self, step: int, num_steps: int) -> bool:
        start, end = self.window
        return step / num_steps >= start and (step + 1) / num_steps <= end

    def residuals(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> dict[str, Any]:
        """The UNet keyword arguments for a branch batch ``x`` (rows = k copies of the n images) and text ``emb``."""
        n = (self.images[0] if self.images else self.adapter_state[0]).shape[0]
        k = x.shape[0] // n
        out: dict[str, Any] = {}
        if self.controlnet is not None:
            images = [torch.cat([im] * k) if k > 1 else im for im in self.images]
            multi = isinstance(self.controlnet, MultiControlNetModel)
            down, mid = self.controlnet(
                x, t, encoder_hidden_states=emb, controlnet_cond=images if multi else images[0],
                conditioning_scale=self.scales if multi else self.scales[0], guess_mode=False, return_dict=False,
            )
            out.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if self.adapter_state is not None:
            out["down_intrablock_additional_residuals"] = [torch.cat([s] * k) for s in self.adapter_state]
        return out


def controlnet_scales(controlnet: Any, scale: float | Sequence[float]) -> list[float]:
    count = len(controlnets(controlnet))
    scales = list(scale) if isinstance(scale, (list, tuple)) else [float(scale)] * count
    if len(scales) != count:
        raise ValueError(f"controlnet_conditioning_scale has {len(scales)} values for {count} ControlNets")
    return scales
