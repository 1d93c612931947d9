"""The emoji world's target domains: OpenMoji, and styles derived from the rendered world for more evidence.

    d = get_domain("sepia")
    d.render(emoji, 32)          # a PIL image of the emoji in the domain's style
    d.caption                    # the fine-tune baselines' caption ("sepia style")

A domain is a base style of :mod:`indomain.world.render` plus a pixel recipe. The method is tuned on ``openmoji`` only;
the others exist to test it on domains it was never tuned on. They were chosen among candidates for what the
32-px world *and its VAE* can represent, on the 276 held-out emoji (the emoji prior's VAE round trip,
`experiments/domain_candidates.py`; its table is in docs/RESULTS.md): a sepia tint and a small-sticker layout survive
the round trip with less error than OpenMoji itself. Colour negatives and two-colour palettes (navy/peach duotone)
were rejected: the VAE, trained on Noto and Twemoji on white, turns their backgrounds into speckle and invents
colours.

* ``openmoji`` -- the OpenMoji font, the world's original domain (shapes the prior has never seen);
* ``sepia``    -- Twemoji, luminance mapped to a brown-to-cream sepia ramp (a colour shift: shapes the prior knows);
* ``sticker``  -- Noto drawn at 5/8 of the canvas, centred on white (a layout shift: a small sticker on a page).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .render import STYLES, Emoji, render

__all__ = ["Domain", "DOMAINS", "get_domain"]

_SEPIA_DARK = np.array([112.0, 66.0, 20.0], np.float32)
_SEPIA_LIGHT = np.array([255.0, 247.35, 229.5], np.float32)  # white x (1, 0.97, 0.9): paper, not pure white
STICKER_SCALE = 5 / 8


def _identity(image: Image.Image) -> Image.Image:
    return image


def sepia(image: Image.Image) -> Image.Image:
    """Luminance mapped linearly from dark brown (black) to cream (white)."""
    g = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255
    return Image.fromarray((_SEPIA_DARK + (_SEPIA_LIGHT - _SEPIA_DARK) * g).round().clip(0, 255).astype(np.uint8))


def sticker(image: Image.Image) -> Image.Image:
    """The image shrunk to :data:`STICKER_SCALE` of its side (LANCZOS) and centred on a white canvas."""
    image = image.convert("RGB")
    side = max(1, round(image.width * STICKER_SCALE))
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image.resize((side, side), Image.LANCZOS), ((image.width - side) // 2, (image.height - side) // 2))
    return canvas


@dataclass(frozen=True)
class Domain:
    """A target domain of the emoji world: ``base`` style drawn, then ``recipe`` applied to the RGB render."""

    name: str
    base: str
    caption: str  # what the text fine-tune baselines are trained with ("<caption>, <emoji name>" at sampling)
    description: str
    recipe: Callable[[Image.Image], Image.Image] = _identity

    def render(self, emoji: Emoji, size: int = 32) -> Image.Image:
        """``emoji`` in this domain's style, ``size`` x ``size`` RGB on its background."""
        return self.recipe(render(emoji, self.base, size).convert("RGB"))


DOMAINS: dict[str, Domain] = {
    "openmoji": Domain("openmoji", "openmoji", "openmoji style", "OpenMoji font renders (the original domain)"),
    "sepia": Domain("sepia", "twemoji", "sepia style", "Twemoji tinted sepia (brown to cream)", sepia),
    "sticker": Domain("sticker", "noto", "small sticker style", "Noto at 5/8 size, centred on white", sticker),
}
assert all(d.base in STYLES for d in DOMAINS.values())


def get_domain(name: str | Domain) -> Domain:
    """The domain called ``name`` (a :class:`Domain` is returned as is); ``ValueError`` naming the choices."""
    if isinstance(name, Domain):
        return name
    if name not in DOMAINS:
        raise ValueError(f"unknown emoji-world domain {name!r}; expected one of {sorted(DOMAINS)}")
    return DOMAINS[name]
