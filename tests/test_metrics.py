"""Tests for indomain.metrics: offline, tiny, seconds.

FID/KID use a tiny seeded random conv net as the feature extractor; CLIP score uses a tiny random CLIP built from
config with a byte-level tokenizer. Nothing touches a model hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchmetrics
from PIL import Image
from torch import nn

from indomain import metrics as M
from indomain.data import SkippedImagesWarning

RES = 16


class TinyFeatures(nn.Module):
    """A seeded random conv net mapping (N, 3, H, W) in [0, 1] to (N, 16); counts its forward calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.calls = 0
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images_seen += x.shape[0]
        return self.net(x)


def smooth_images(n: int, seed: int, size: int = RES) -> torch.Tensor:
    """Smooth random images in [0, 1] (low-res noise upsampled), so added noise is a real change of distribution."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=gen)
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def write_folder(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "real", smooth_images(48, seed=1))


# --------------------------------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero(real_dir: Path, tmp_path: Path) -> None:
    res = M.image_metrics(real_dir, real_dir, TinyFeatures(), metrics=("fid",), resolution=RES,
                          cache_dir=tmp_path / "cache")["fid"]
    assert res.metric == "fid"
    assert abs(res.value) < 1e-3
    assert res.n_real == res.n_generated == 48


def test_fid_grows_with_noise(real_dir: Path, tmp_path: Path) -> None:
    extractor = TinyFeatures()
    base = next(M.iter_image_batches(real_dir, RES, batch_size=100))
    noise = torch.randn(base.shape, generator=torch.Generator().manual_seed(7))
    values = []
    for level in (0.05, 0.15, 0.4):
        perturbed = (base + level * noise).clamp(0, 1)
        res = M.image_metrics(real_dir, perturbed, extractor, metrics=("fid",), resolution=RES,
                              cache_dir=tmp_path / "c")
        values.append(res["fid"].value)
    assert values[0] > 1e-3
    assert values[0] < values[1] < values[2], values


def test_torchmetrics_fid_matches_pure_frechet_helper(real_dir: Path, tmp_path: Path) -> None:
    extractor = TinyFeatures()
    other = smooth_images(40, seed=2)
    res = M.image_metrics(real_dir, other, extractor, metrics=("fid",), resolution=RES, cache_dir=tmp_path / "c")["fid"]
    real = M.real_image_stats(real_dir, extractor, RES, cache_dir=tmp_path / "c")
    fake = M.FeatureStats.from_features(M.extract_features(extractor, M.iter_image_batches(other, RES)))
    helper = M.frechet_distance(real.mu.numpy(), real.sigma.numpy(), fake.mu, fake.sigma)  # numpy and torch mixed
    assert res.value > 0.01
    assert helper == pytest.approx(res.value, rel=1e-3)


def test_frechet_distance_closed_form() -> None:
    # N(0, I) vs N(1, 4I) in D dims: |mu|^2 = D, trace term D * (1 + 4 - 2 * 2) = D.
    dim = 5
    value = M.frechet_distance(np.zeros(dim), np.eye(dim), np.ones(dim), 4 * np.eye(dim))
    assert value == pytest.approx(2 * dim, abs=1e-9)
    # Rank-deficient covariances (fewer samples than dimensions) stay finite and zero against themselves.
    feats = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    st = M.FeatureStats.from_features(feats)
    assert M.frechet_distance(st.mu, st.sigma, st.mu, st.sigma) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --------------------------------------------------------------------------------------------- KID


def test_kid_refuses_subset_larger_than_either_set(real_dir: Path, tmp_path: Path) -> None:
    extractor = TinyFeatures()
    generated = smooth_images(12, seed=3)
    with pytest.raises(ValueError) as err:
        M.image_metrics(real_dir, generated, extractor, metrics=("kid",), kid_subset_size=20, resolution=RES,
                        cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "subset_size=20" in msg and "48 real" in msg and "12 generated" in msg
    assert extractor.calls == 0  # refused before any feature extraction


def test_kid_small_for_same_distribution_and_large_for_noise(real_dir: Path, tmp_path: Path) -> None:
    extractor = TinyFeatures()
    same = M.image_metrics(real_dir, smooth_images(40, seed=1), extractor, metrics=("kid",), kid_subset_size=20,
                           kid_subsets=20, resolution=RES, cache_dir=tmp_path / "c")["kid"]
    noisy_imgs = (smooth_images(40, seed=1) + 0.5 * torch.randn(40, 3, RES, RES)).clamp(0, 1)
    noisy = M.image_metrics(real_dir, noisy_imgs, extractor, metrics=("kid",), kid_subset_size=20, kid_subsets=20,
                            resolution=RES, cache_dir=tmp_path / "c")["kid"]
    assert same.std is not None and math.isfinite(same.std)
    assert noisy.value > 10 * abs(same.value)
    assert same.params["subset_size"] == 20 and same.params["subsets"] == 20
    # Seeded subsets: the same call gives the same number.
    again = M.image_metrics(real_dir, noisy_imgs, extractor, metrics=("kid",), kid_subset_size=20, kid_subsets=20,
                            resolution=RES, cache_dir=tmp_path / "c")["kid"]
    assert again.value == noisy.value


# --------------------------------------------------------------------------------------------- cache


def test_real_stats_cache_hit_and_invalidation(real_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extractor = TinyFeatures()
    first = M.real_image_stats(real_dir, extractor, RES, cache_dir=cache, batch_size=16)
    assert extractor.images_seen == 48 and first.metadata["cache"] == "miss"
    assert len(list(cache.glob("*.safetensors"))) == 1

    second = M.real_image_stats(real_dir, extractor, RES, cache_dir=cache, batch_size=16)
    assert extractor.images_seen == 48, "cache hit must not run the extractor"
    assert second.metadata["cache"] == "hit" and second.n == 48
    torch.testing.assert_close(second.mu, first.mu)
    torch.testing.assert_close(second.sigma, first.sigma)
    torch.testing.assert_close(second.features, first.features)

    # A new file changes the folder key: recomputed, with the new count.
    write_folder(real_dir / "more", smooth_images(1, seed=9))
    third = M.real_image_stats(real_dir, extractor, RES, cache_dir=cache, batch_size=16)
    assert third.metadata["cache"] == "miss" and third.n == 49
    assert extractor.images_seen == 48 + 49

    # Another extractor (other weights) or another resolution is another entry too.
    other = TinyFeatures(seed=1)
    assert M.real_image_stats(real_dir, other, RES, cache_dir=cache).metadata["cache"] == "miss"
    assert M.real_image_stats(real_dir, extractor, RES * 2, cache_dir=cache).metadata["cache"] == "miss"


def test_fid_uses_cached_real_stats(real_dir: Path, tmp_path: Path) -> None:
    extractor = TinyFeatures()
    gen = smooth_images(10, seed=4)
    first = M.image_metrics(real_dir, gen, extractor, metrics=("fid",), resolution=RES, cache_dir=tmp_path / "c")["fid"]
    seen = extractor.images_seen
    second = M.image_metrics(real_dir, gen, extractor, metrics=("fid",), resolution=RES,
                             cache_dir=tmp_path / "c")["fid"]
    assert extractor.images_seen - seen == 10  # only the generated images
    assert second.params["real_stats"]["cache"] == "hit" and first.params["real_stats"]["cache"] == "miss"
    assert second.value == pytest.approx(first.value, rel=1e-9)


def test_precomputed_real_stats_must_match_the_extractor(real_dir: Path, tmp_path: Path) -> None:
    extractor = TinyFeatures()
    stats = M.real_image_stats(real_dir, extractor, RES, cache_dir=tmp_path / "c")
    gen = smooth_images(8, seed=6)
    from_stats = M.image_metrics(stats, gen, extractor, metrics=("fid",), resolution=RES)["fid"]
    from_folder = M.image_metrics(real_dir, gen, extractor, metrics=("fid",), resolution=RES,
                                  cache_dir=tmp_path / "c")["fid"]
    assert from_stats.value == pytest.approx(from_folder.value, rel=1e-9) and from_stats.n_real == 48
    with pytest.raises(ValueError, match="computed with"):
        M.image_metrics(stats, gen, TinyFeatures(seed=3), metrics=("fid",), resolution=RES)


def test_default_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INDOMAIN_STATS_CACHE", str(tmp_path / "x"))
    assert M.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("INDOMAIN_STATS_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert M.default_cache_dir() == Path("~/.cache/indomain/stats").expanduser()


# --------------------------------------------------------------------------------------------- results


def test_result_json_records_protocol(real_dir: Path, tmp_path: Path) -> None:
    results = M.image_metrics(real_dir, smooth_images(20, seed=5), TinyFeatures(), resolution=RES,
                              kid_subset_size=10, kid_subsets=5, cache_dir=tmp_path / "c")
    for name in ("fid", "kid"):
        data = json.loads(results[name].to_json())
        assert data["metric"] == name
        assert data["library"] == "torchmetrics"
        assert data["library_version"] == torchmetrics.__version__
        assert data["extractor"] == "TinyFeatures"
        assert "sha256=" in data["extractor_id"]
        assert data["resize_mode"] == "none"
        assert data["resolution"] == RES and f"{RES}x{RES}" in data["preprocess"]
        assert data["n_real"] == 48 and data["n_generated"] == 20
        assert data["feature_dim"] == 16
        assert isinstance(data["value"], float) and math.isfinite(data["value"])
    assert json.loads(results["kid"].to_json())["std"] is not None


# --------------------------------------------------------------------------------------------- images


def test_empty_missing_and_unreadable_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(M.ImageFolderError, match="holds no image") as err:
        M.real_image_stats(empty, TinyFeatures(), RES, cache_dir=tmp_path / "c")
    assert str(empty) in str(err.value)
    with pytest.raises(M.ImageFolderError, match="does-not-exist"):
        M.image_metrics(tmp_path / "does-not-exist", smooth_images(4, 0), TinyFeatures(), metrics=("fid",),
                        resolution=RES)
    broken = tmp_path / "broken"
    write_folder(broken, smooth_images(2, seed=0))
    (broken / "bad.png").write_bytes(b"not a png")
    # The training rules (indomain.data): a file that is not an image is left out, with a warning naming it.
    with pytest.warns(SkippedImagesWarning, match="bad.png"):
        assert M.real_image_stats(broken, TinyFeatures(), RES, use_cache=False).n == 2


def test_mixed_size_images_follow_the_documented_rule(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    # 40x24 landscape: red centre square, blue side bands that the center crop must remove.
    wide = Image.new("RGB", (40, 24), (0, 0, 255))
    wide.paste((255, 0, 0), (8, 0, 32, 24))
    wide.save(folder / "wide.png")
    # Transparent RGBA: must become white, not black. (One opaque white pixel: an alpha channel that is 0
    # everywhere counts as unset, as in training; see indomain.data.)
    clear = Image.new("RGBA", (9, 9), (0, 0, 0, 0))
    clear.putpixel((4, 4), (255, 255, 255, 255))
    clear.save(folder / "sub" / "clear.webp", lossless=True)
    Image.new("RGB", (RES, RES), (0, 255, 0)).save(folder / "exact.jpg", quality=95)
    Image.new("L", (30, 30), 128).save(folder / "gray.bmp")
    (folder / ".hidden").mkdir()
    Image.new("RGB", (5, 5)).save(folder / ".hidden" / "skip.png")

    files = M.list_images(folder)
    assert [p.relative_to(folder).as_posix() for p in files] == ["exact.jpg", "gray.bmp", "sub/clear.webp", "wide.png"]
    batch = next(M.iter_image_batches(folder, RES, batch_size=10))
    assert batch.shape == (4, 3, RES, RES) and batch.dtype == torch.float32
    exact, gray, clear, wide_t = batch
    assert torch.allclose(wide_t[0], torch.ones(RES, RES)) and wide_t[2].max() < 1e-6  # only red survived
    assert torch.allclose(clear, torch.ones_like(clear))  # alpha on white
    assert torch.allclose(gray, torch.full_like(gray, 128 / 255))
    assert exact[1].mean() > 0.95 and exact[0].mean() < 0.05

    # Tensors of another size take the same path as files; tensors at the resolution pass unchanged.
    as_tensor = torch.from_numpy(np.array(wide)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(next(M.iter_image_batches(as_tensor, RES))[0], wide_t)
    exact_size = smooth_images(2, seed=0)
    torch.testing.assert_close(next(M.iter_image_batches(exact_size, RES)), exact_size)

    stats = M.real_image_stats(folder, TinyFeatures(), RES, cache_dir=tmp_path / "c")
    assert stats.n == 4


def test_folders_are_read_like_training(tmp_path: Path) -> None:
    """indomain.data reads FID folders: files judged by content, 16-bit scaled (not white), EXIF orientation."""
    from indomain.data import load_rgb

    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(np.full((RES, RES), 32896, dtype=np.uint16)).save(folder / "grey16.png")  # 32896 / 257 = 128
    Image.new("RGB", (RES, RES), (255, 0, 0)).save(folder / "red.image", format="PNG")  # no image extension
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: stored portrait, shown landscape
    Image.new("RGB", (RES, 2 * RES), (0, 0, 255)).save(folder / "rotated.jpg", exif=exif, quality=95)
    files = M.list_images(folder)
    assert [p.name for p in files] == ["grey16.png", "red.image", "rotated.jpg"]
    assert load_rgb(files[2]).size == (2 * RES, RES)
    batch = next(M.iter_image_batches(folder, RES, batch_size=10))
    assert torch.allclose(batch[0], torch.full_like(batch[0], 128 / 255))
    for image, path in zip(batch, files, strict=True):
        torch.testing.assert_close(image, M.preprocess_image(load_rgb(path), RES))


def test_as_image_batch_channels_and_dtypes() -> None:
    rgba = torch.zeros(1, 4, 2, 2)
    rgba[0, 3, 0, 0] = 1.0  # one opaque black pixel, the rest transparent
    out = M.as_image_batch(rgba)
    assert out.shape == (1, 3, 2, 2) and (out[0, :, 0, 0] == 0).all() and (out[0, :, 1, 1] == 1).all()
    assert M.as_image_batch(torch.full((2, 2), 255, dtype=torch.uint8).expand(1, 1, 2, 2)).eq(1).all()
    with pytest.raises(TypeError):
        M.as_image_batch(torch.zeros(1, 3, 2, 2, dtype=torch.int64))


def test_float_images_outside_unit_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        next(M.iter_image_batches(torch.rand(2, 3, RES, RES) * 2 - 1, RES))


# --------------------------------------------------------------------------------------------- Inception


def test_missing_inception_weights_says_how_to_pass_them(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.pth", None):
        with pytest.raises(M.MissingWeightsError) as err:
            M.inception_extractor(path)
        assert isinstance(err.value, FileNotFoundError)
        msg = str(err.value)
        assert "--inception-weights" in msg and M.INCEPTION_WEIGHTS_FILENAME in msg
    assert "nope.pth" in str(pytest.raises(M.MissingWeightsError, M.inception_extractor, tmp_path / "nope.pth").value)


def test_inception_extractor_loads_a_local_state_dict(tmp_path: Path) -> None:
    model = M.FIDInceptionV3()
    path = tmp_path / "inception.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.warns(UserWarning, match="6726825d"):  # random weights are not the standard file
        loaded = M.inception_extractor(path, resize="legacy-tf")
    torch.testing.assert_close(loaded.Mixed_7c.branch_pool.conv.weight, model.Mixed_7c.branch_pool.conv.weight)
    info = M.describe_extractor(loaded)
    assert info.identity.startswith("fid-inception-v3:pool3:sha256=") and "legacy-tf" in info.identity
    assert "TF1" in info.resize_mode and loaded.input_resolution == 299
    loaded.train()
    assert not loaded.training  # BatchNorm statistics never move

    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(bad))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="not an FID Inception"):
        M.inception_extractor(bad)


# --------------------------------------------------------------------------------------------- CLIP score


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from indomain.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _manual_clip_score(model_dir: Path, images: torch.Tensor, texts: list[str]) -> float:
    """Reference: 100 * cos(image, text) straight from the model, averaged, clamped at 0."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    processor = CLIPProcessor.from_pretrained(str(model_dir))
    pil = [Image.fromarray((im * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()) for im in images]
    inputs = processor(text=texts, images=pil, return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        txt = txt.pooler_output
    cos = nn.functional.cosine_similarity(img, txt, dim=-1)
    return max(float(100 * cos.mean()), 0.0)


def test_clip_score_with_a_tiny_local_model(tiny_clip_dir: Path) -> None:
    images = smooth_images(5, seed=11, size=32)
    texts = ["a red face", "a cat wearing glasses", "x", "an emoji", "smiling"]
    res = M.clip_score(images, texts, tiny_clip_dir, batch_size=2)
    assert math.isfinite(res.value) and 0.0 <= res.value <= 100.0
    assert res.value > 0  # this seed gives a positive mean, so the comparison below is not 0 == 0
    assert res.value == pytest.approx(_manual_clip_score(tiny_clip_dir, images, texts), abs=1e-3)
    data = json.loads(res.to_json())
    assert data["metric"] == "clip_score" and data["n_generated"] == 5 and data["resolution"] == 32
    assert data["library"] == "torchmetrics" and data["library_version"] == torchmetrics.__version__

    # uint8 input and float input in [0, 1] describe the same images: same score.
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert M.clip_score(as_uint8, texts, tiny_clip_dir).value == pytest.approx(res.value, abs=1e-4)
    # The scored text matters (it is taken as given).
    assert M.clip_score(images, ["zzz"] * 5, tiny_clip_dir).value != pytest.approx(res.value, abs=1e-4)


def test_clip_score_errors(tiny_clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(M.MissingWeightsError, match="--clip-model"):
        M.clip_score(smooth_images(2, 0), ["a", "b"], tmp_path / "no-clip")
    with pytest.raises(M.MissingWeightsError, match="--clip-model"):
        M.clip_score(smooth_images(2, 0), ["a", "b"], None)
    with pytest.raises(ValueError, match="2 images and 3 texts"):
        M.clip_score(smooth_images(2, 0), ["a", "b", "c"], tiny_clip_dir)


# --------------------------------------------------------------------------- improved precision and recall


def _gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_knn_radii_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # neighbours of 0: 1, 3, 7; of 1: 0, 3, 7 (distances 1, 2, 6); of 3: 1, 0, 7 (2, 3, 4); of 7: 3, 1, 0 (4, 6, 7)
    assert M.knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert M.knn_radii(x, k=2, chunk_size=3).tolist() == [3.0, 2.0, 3.0, 6.0]
    # 0.5 is in the ball of 0; 5 on the rim of 3's ball (2 <= 2); -1.5 and 11.5 are in none (11.5 is 4.5 from 7)
    inside = M.in_manifold(torch.tensor([[0.5], [5.0], [-1.5], [11.5]]), x, M.knn_radii(x, k=1), chunk_size=3)
    assert inside.tolist() == [True, True, False, False]


def test_precision_recall_of_identical_sets_is_one() -> None:
    real = _gaussian(300, 16, 0)
    pr = M.precision_recall(real, real.clone(), k=3, chunk_size=64)
    assert (pr.precision, pr.recall) == (1.0, 1.0)
    assert (pr.k, pr.n_real, pr.n_fake) == (3, 300, 300)
    # two samples of the same distribution: both shares high, but not 1 (the estimate is not trivially saturated)
    other = M.precision_recall(real, _gaussian(300, 16, 1))
    assert 0.6 < other.precision < 1.0 and 0.6 < other.recall < 1.0


def test_a_collapsed_set_has_precision_but_no_recall() -> None:
    real = _gaussian(500, 8, 0)
    collapsed = real[7] + 1e-3 * _gaussian(200, 8, 1)  # every sample near one real point: realistic, no variety
    pr = M.precision_recall(real, collapsed)
    assert pr.precision >= 0.95 and pr.recall <= 0.02


def test_a_far_away_set_has_neither() -> None:
    real = _gaussian(400, 8, 0)
    pr = M.precision_recall(real, _gaussian(200, 8, 1) + 20.0)
    assert (pr.precision, pr.recall) == (0.0, 0.0)
    # half the samples on the reals, half far away: precision about a half, recall stays high
    half = torch.cat([_gaussian(200, 8, 2), _gaussian(200, 8, 3) + 20.0])
    mixed = M.precision_recall(real, half)
    assert 0.35 <= mixed.precision <= 0.55 and mixed.recall > 0.6


def test_precision_recall_refuses_small_and_mismatched_sets() -> None:
    real = _gaussian(10, 4, 0)
    with pytest.raises(ValueError, match="more than 3 fake"):
        M.precision_recall(real, real[:3], k=3)
    with pytest.raises(ValueError, match="more than 10 real"):
        M.precision_recall(real, real, k=10)
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.knn_radii(real, k=0)
    with pytest.raises(ValueError, match="5 features but the manifold has 4"):
        M.precision_recall(real, _gaussian(10, 5, 1))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        M.precision_recall(real, torch.zeros(10, 4, 1))
    with pytest.raises(ValueError, match="non-finite"):
        M.precision_recall(real, torch.full((10, 4), math.nan))
