"""Tests for indomain.data: discovery, RGB conversion, resizing, the folder scan."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indomain import data
from indomain.data import (
    DataError,
    ImageFolderDataset,
    SkippedImagesWarning,
    SmallImagesWarning,
    composite_on_white,
    find_images,
    load_rgb,
    resize_shorter,
    to_rgb,
    to_tensor,
)

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _solid(path: Path, size=(40, 30), color=(200, 60, 20), mode="RGB", fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt, **save)
    return path


def _noise(path: Path, size=(32, 32), fmt=None) -> Path:
    """A noisy image: compresses badly, so cutting the file loses pixel data."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _collect(fn):
    """Run fn() recording every warning; return (result, warnings)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, rec


def _of(rec, cls) -> list[warnings.WarningMessage]:
    return [w for w in rec if issubclass(w.category, cls)]


def _px(img: Image.Image, xy) -> tuple[int, ...]:
    return tuple(img.getpixel(xy))


def _close(a, b, tol=6) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- #
# formats and conversion
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("name", "fmt", "tol", "save"),
    [
        ("a.png", "PNG", 0, {}),
        ("a.jpg", "JPEG", 6, {"quality": 95}),
        ("a.webp", "WEBP", 6, {"quality": 95}),
        ("a.bmp", "BMP", 0, {}),
        # Multi-picture JPEG as phones write it; Pillow reports it as "MPO".
        ("a.mpo", "MPO", 6, {"quality": 95, "save_all": True, "append_images": [Image.new("RGB", (40, 30))]}),
    ],
)
def test_each_accepted_format_loads(tmp_path, name, fmt, tol, save):
    p = _solid(tmp_path / name, fmt=fmt, **save)
    assert Image.open(p).format == fmt
    images, skipped = find_images(tmp_path)
    assert images == [p] and skipped == []
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert _close(_px(img, (20, 15)), (200, 60, 20), tol)


def test_format_is_judged_by_content_not_extension(tmp_path):
    png_named_jpg = _solid(tmp_path / "really_png.jpg", fmt="PNG")
    gif = _solid(tmp_path / "anim.gif", mode="P", color=3, fmt="GIF")
    images, skipped = find_images(tmp_path)
    assert images == [png_named_jpg]
    assert skipped == [(gif, "unsupported image format GIF")]


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40x20: left half red, right half blue. Orientation 6 = "rotate
    # 90 deg clockwise to display", so the upright image is 20x40 with red on top.
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)

    out = load_rgb(p)
    assert out.size == (20, 40)
    assert _close(_px(out, (10, 5)), (255, 0, 0), 8)
    assert _close(_px(out, (10, 35)), (0, 0, 255), 8)


def test_grayscale_becomes_rgb(tmp_path):
    p = _solid(tmp_path / "g.png", mode="L", color=77)
    out = load_rgb(p)
    assert out.mode == "RGB"
    assert _px(out, (0, 0)) == (77, 77, 77)


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(0, 0, 0, 0), (10, 20, 30, 255), (0, 0, 0, 128)])
    p = tmp_path / "rgba.png"
    img.save(p)
    out = load_rgb(p)
    assert out.mode == "RGB"
    assert _px(out, (0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert _px(out, (1, 0)) == (10, 20, 30)  # opaque untouched
    assert _close(_px(out, (2, 0)), (127, 127, 127), 1)  # half black over white


def test_la_is_composited_on_white(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (40, 255)])
    p = tmp_path / "la.png"
    img.save(p)
    out = load_rgb(p)
    assert _px(out, (0, 0)) == (255, 255, 255)
    assert _px(out, (1, 0)) == (40, 40, 40)


def test_all_zero_alpha_is_treated_as_opaque():
    # Some 32-bit BMP writers leave alpha at 0; that must not give a white image.
    img = Image.new("RGBA", (2, 2), (10, 200, 30, 0))
    assert _px(to_rgb(img), (1, 1)) == (10, 200, 30)


def test_composite_on_white_is_the_plain_operation():
    # No "unset alpha" policy here (that is to_rgb's, for files): transparent is white.
    assert _px(composite_on_white(Image.new("RGBA", (2, 2), (10, 200, 30, 0))), (1, 1)) == (255, 255, 255)
    pal = Image.new("P", (1, 1), 0)
    pal.putpalette([9, 8, 7] + [0] * 765)
    assert _px(composite_on_white(pal), (0, 0)) == (9, 8, 7)  # no transparency: only converted
    pal.info["transparency"] = 0
    assert _px(composite_on_white(pal), (0, 0)) == (255, 255, 255)


def test_cmyk_becomes_rgb(tmp_path):
    p = _solid(tmp_path / "cmyk.jpg", size=(8, 8), mode="CMYK", color=(255, 0, 0, 0), quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_rgb(p)
    assert out.mode == "RGB"
    assert _close(_px(out, (4, 4)), (0, 255, 255), 4)  # pure cyan
    assert _px(to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))), (0, 0)) == (255, 255, 255)


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I;16")
    out = load_rgb(p)
    assert out.mode == "RGB"
    # Pillow's plain convert would give 255 for the middle pixel.
    assert [_px(out, (x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_int32_and_float_modes_are_scaled():
    i = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), mode="I")
    assert [_px(to_rgb(i), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert [_px(to_rgb(f), (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_palette_images_become_rgb(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    pal.putdata([0, 1])
    plain = tmp_path / "p.png"
    pal.save(plain)
    trans = tmp_path / "pt.png"
    pal.save(trans, transparency=0)  # index 0 (red) is fully transparent

    out = load_rgb(plain)
    assert out.mode == "RGB"
    assert [_px(out, (x, 0)) for x in range(2)] == [(255, 0, 0), (0, 255, 0)]
    out_t = load_rgb(trans)
    assert [_px(out_t, (x, 0)) for x in range(2)] == [(255, 255, 255), (0, 255, 0)]


def test_grayscale_with_transparent_key_is_composited_on_white(tmp_path):
    img = Image.new("L", (2, 1), 0)
    img.putpixel((1, 0), 100)
    p = tmp_path / "lt.png"
    img.save(p, transparency=0)
    out = load_rgb(p)
    assert [_px(out, (x, 0)) for x in range(2)] == [(255, 255, 255), (100, 100, 100)]


# --------------------------------------------------------------------------- #
# bad files
# --------------------------------------------------------------------------- #


def _bad_folder(root: Path) -> dict[str, Path]:
    files = {
        "good": _solid(root / "good.png"),
        "corrupt": _noise(root / "corrupt.png"),
        "trunc_png": _truncate(_noise(root / "trunc.png")),
        "trunc_jpg": _truncate(_noise(root / "trunc.jpg")),
        "text": root / "notes_renamed.png",
        "bomb": _solid(root / "bomb.png", size=(100, 100)),
    }
    # Zero out bytes inside the compressed pixel data: the header still parses,
    # so only a full decode can notice.
    raw = bytearray(files["corrupt"].read_bytes())
    i = raw.find(b"IDAT")
    raw[i + 20 : i + 60] = bytes(40)
    files["corrupt"].write_bytes(bytes(raw))
    files["text"].write_text("this is not an image\n")
    return files


def test_bad_files_are_skipped_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 50 * 50)
    f = _bad_folder(tmp_path)

    images, skipped = find_images(tmp_path)
    assert images == [f["good"]]
    reasons = dict(skipped)
    assert set(reasons) == {f[k] for k in ("corrupt", "trunc_png", "trunc_jpg", "text", "bomb")}
    assert reasons[f["corrupt"]].startswith("corrupt or truncated")
    assert reasons[f["trunc_png"]].startswith("corrupt or truncated")
    assert reasons[f["trunc_jpg"]].startswith("corrupt or truncated")
    assert reasons[f["text"]].startswith("not an image file")
    assert reasons[f["bomb"]].startswith("decompression bomb")

    ds, rec = _collect(lambda: ImageFolderDataset(tmp_path, resolution=16))
    assert ds.paths == [f["good"]] and len(ds) == 1
    skipped_w = _of(rec, SkippedImagesWarning)
    assert len(skipped_w) == 1
    msg = str(skipped_w[0].message)
    assert "skipped 5 of 6" in msg
    for name in ("corrupt.png", "trunc.png", "trunc.jpg", "notes_renamed.png", "bomb.png"):
        assert name in msg
    assert "good.png" not in msg


def test_pillow_decompression_bomb_error_is_caught(tmp_path, monkeypatch):
    # Pillow's own global guard: warning above the limit, error above 2x.
    _solid(tmp_path / "ok.png", size=(10, 10))
    warn = _solid(tmp_path / "warn.png", size=(30, 30))
    err = _solid(tmp_path / "err.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    (images, skipped), rec = _collect(lambda: find_images(tmp_path))
    assert images == [tmp_path / "ok.png"]
    assert {p for p, _ in skipped} == {warn, err}
    assert all(r.startswith("decompression bomb") for _, r in skipped)
    assert not _of(rec, Image.DecompressionBombWarning)  # caught, not leaked


def test_skipped_list_is_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LISTED", 3)
    _solid(tmp_path / "good.png")
    for i in range(7):
        (tmp_path / f"bad{i}.png").write_text("nope")
    _, rec = _collect(lambda: ImageFolderDataset(tmp_path, resolution=16))
    (w,) = _of(rec, SkippedImagesWarning)
    msg = str(w.message)
    assert "skipped 7 of 8" in msg
    assert "bad0.png" in msg and "bad2.png" in msg and "bad3.png" not in msg
    assert "... and 4 more" in msg


def test_load_rgb_on_bad_file_raises_data_error(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("hello")
    with pytest.raises(DataError, match="x.png.*not an image"):
        load_rgb(p)


# --------------------------------------------------------------------------- #
# folder errors
# --------------------------------------------------------------------------- #


def test_missing_folder_raises(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope.*does not exist"):
        ImageFolderDataset(missing, resolution=16)
    with pytest.raises(DataError, match="does not exist"):
        find_images(missing)


def test_file_instead_of_folder_raises(tmp_path):
    p = _solid(tmp_path / "a.png")
    with pytest.raises(DataError, match="a.png.*not a folder"):
        ImageFolderDataset(p, resolution=16)


def test_empty_folder_raises(tmp_path):
    root = tmp_path / "empty_dir"
    root.mkdir()
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored
    with pytest.raises(DataError, match="empty_dir.*empty") as ei:
        ImageFolderDataset(root, resolution=16)
    assert isinstance(ei.value, ValueError)


def test_folder_with_only_bad_files_raises(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.png").write_text("not png")
    _truncate(_noise(root / "b.jpg"))
    with pytest.raises(DataError) as ei:
        ImageFolderDataset(root, resolution=16)
    msg = str(ei.value)
    assert "junk" in msg and "no usable image" in msg and "2 file(s)" in msg
    assert "a.png: not an image file" in msg
    assert "b.jpg: corrupt or truncated" in msg


# --------------------------------------------------------------------------- #
# min-size policy
# --------------------------------------------------------------------------- #


def _sized_folder(root: Path) -> dict[str, Path]:
    # resolution 64: tiny < 16, small < 64.
    return {
        "big": _solid(root / "big.png", size=(80, 96)),
        "small": _solid(root / "small.png", size=(40, 32)),
        "tiny": _solid(root / "tiny.png", size=(15, 200)),
    }


def test_tiny_images_warn_skip_by_default(tmp_path):
    f = _sized_folder(tmp_path)
    ds, rec = _collect(lambda: ImageFolderDataset(tmp_path, resolution=64))
    assert ds.paths == [f["big"], f["small"]]
    assert ds.upscaled == [f["small"]]
    (skip_w,) = _of(rec, SkippedImagesWarning)
    assert "tiny.png: too small: 15x200" in str(skip_w.message)
    (small_w,) = _of(rec, SmallImagesWarning)
    assert "small.png: 40x32" in str(small_w.message)
    assert "big.png" not in str(small_w.message)


def test_tiny_images_error_policy(tmp_path):
    _sized_folder(tmp_path)
    with pytest.raises(DataError, match=r"(?s)resolution 64.*tiny\.png"):
        ImageFolderDataset(tmp_path, resolution=64, min_size_policy="error")


def test_tiny_images_allow_policy(tmp_path):
    f = _sized_folder(tmp_path)
    ds, rec = _collect(lambda: ImageFolderDataset(tmp_path, resolution=64, min_size_policy="allow"))
    assert ds.paths == [f["big"], f["small"], f["tiny"]]
    assert not _of(rec, SkippedImagesWarning)
    (small_w,) = _of(rec, SmallImagesWarning)
    assert "tiny.png" in str(small_w.message) and "small.png" in str(small_w.message)


def test_only_tiny_images_raises(tmp_path):
    _solid(tmp_path / "t.png", size=(4, 4))
    with pytest.raises(DataError, match="no usable image"):
        ImageFolderDataset(tmp_path, resolution=64)


def test_bad_policy_rejected(tmp_path):
    _solid(tmp_path / "a.png")
    with pytest.raises(ValueError, match="min_size_policy"):
        ImageFolderDataset(tmp_path, resolution=16, min_size_policy="skip")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# preprocessing
# --------------------------------------------------------------------------- #


def test_to_tensor_maps_0_255_to_minus_1_1():
    # Value mapping: 0 -> -1, 255 -> 1, 51 -> -0.6.
    img2 = Image.new("RGB", (20, 20), (0, 255, 51))
    t2 = to_tensor(img2)
    assert t2.shape == (3, 20, 20) and t2.dtype == torch.float32
    assert t2.min() == -1.0 and t2.max() == 1.0
    assert torch.allclose(t2[:, 5, 5], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_resize_keeps_aspect_ratio():
    # 100x50 with red | green | blue bands at 0-20, 20-80, 80-100. Shorter side
    # -> 25 gives 50x25 (bands at 0-10, 10-40, 40-50); the centre 25 columns
    # (12..36) are green. A squashing resize would show red and blue.
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    img.paste((0, 255, 0), (20, 0, 80, 50))
    img.paste((0, 0, 255), (80, 0, 100, 50))
    img = resize_shorter(img, 25)
    assert img.size == (50, 25)
    t = to_tensor(img)[:, :, 12:37]
    rgb = ((t + 1) * 127.5).round()
    assert (rgb[1, :, 3:-3] > 240).all() and (rgb[0, :, 3:-3] < 15).all() and (rgb[2, :, 3:-3] < 15).all()


def test_downscale_is_antialiased():
    # A 1-pixel checkerboard halved: a filtering resize (bicubic) averages it to
    # mid-grey; nearest-neighbour would alias it to pure black or white.
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    img = Image.fromarray(checker).convert("RGB")
    t = to_tensor(resize_shorter(img, 32))
    assert t.shape == (3, 32, 32)
    assert t[:, 4:-4, 4:-4].abs().max() < 0.05


def test_portrait_resize_and_upscale():
    img = resize_shorter(Image.new("RGB", (10, 30), (255, 255, 255)), 32)
    assert img.size == (32, 96)
    t = to_tensor(img)
    assert torch.allclose(t, torch.ones_like(t), atol=1e-6)


# --------------------------------------------------------------------------- #
# discovery and dataset
# --------------------------------------------------------------------------- #


def test_recursive_discovery_is_sorted_and_skips_hidden(tmp_path):
    paths = [
        _solid(tmp_path / "b" / "deep" / "z.png"),
        _solid(tmp_path / "a.png"),
        _solid(tmp_path / "b" / "c.jpg", fmt="JPEG"),
        _solid(tmp_path / "b" / "deep" / "a.webp", fmt="WEBP"),
    ]
    _solid(tmp_path / ".cache" / "hidden.png")
    _solid(tmp_path / "b" / "._resource_fork.png")
    images, skipped = find_images(tmp_path)
    expected = sorted(paths, key=lambda p: p.relative_to(tmp_path).as_posix())
    assert images == expected
    assert images[0] == tmp_path / "a.png" and images[-1] == tmp_path / "b" / "deep" / "z.png"
    assert skipped == []
