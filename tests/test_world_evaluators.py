"""Tests of the emoji world's evaluators (indomain.world.evaluators, .evaluator_training), with the shipped weights.

Fast slices: 40 emoji of each set of renders the evaluators never trained on (``evaluator_holdout``). The thresholds
are set below what the shipped weights measure (see ``indomain_emoji/evaluators/card.json``) and well above what a broken
evaluator reaches; ``test_random_weights_fail_the_sanity_checks`` checks the latter.
"""

from __future__ import annotations

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

import indomain.world.evaluator_sanity as S
import indomain.world.evaluator_training as T
import indomain.world.evaluators as E
from indomain.metrics import MissingWeightsError, extract_features, weights_digest
from indomain.world.render import STYLES

N = 40
K = 10
COLUMNS = {"control_top1", "fd_openmoji", "openmoji_share", "precision_openmoji", "recall_openmoji"}

# Thresholds (measured values of the shipped weights, full held-out sets, are in card.json["validation"]).
MIN_TOP1_OPENMOJI = 0.6  # held-out OpenMoji renders, retrieved through the other two styles, among 10
MIN_SHARE_OPENMOJI = 0.8  # held-out OpenMoji renders judged OpenMoji
MAX_SHARE_PRIOR = 0.2  # held-out Noto / Twemoji renders judged OpenMoji
MAX_TOP1_NOISE = 0.25  # uniform noise, 300 images: chance is 0.1 (binomial std 0.017)
FD_RATIO = 5.0  # FD(Twemoji or Noto renders) >= 5 x FD(OpenMoji renders), same 276 emoji (measured 12x and 20x)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The machines these run on are small and shared: one thread is also the fastest here.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def ev() -> E.EmojiEvaluators:
    return E.load_evaluators()


@pytest.fixture(scope="module")
def held(ev: E.EmojiEvaluators) -> dict[str, list]:
    """N evenly spaced emoji of each style's held-out renders."""
    out = {}
    for style, emojis in E.evaluator_holdout(ev.world).items():
        out[style] = emojis[:: max(1, len(emojis) // N)][:N]
    return out


def _pil(x: torch.Tensor) -> list[PIL.Image.Image]:
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in arr]


# --------------------------------------------------------------------------- shipped files


def test_shipped_weights_and_card(ev: E.EmojiEvaluators) -> None:
    folder = E.default_evaluator_dir()
    weights = folder / E.WEIGHTS_FILENAME
    assert ev.path == weights and weights.stat().st_size < 5_000_000
    card = json.loads((folder / E.CARD_FILENAME).read_text(encoding="utf-8"))
    n_params = sum(p.numel() for p in ev.net.parameters())
    assert card["parameters_shipped"] == n_params and 300_000 <= n_params <= 1_000_000
    assert card["weights_bytes"] == weights.stat().st_size
    assert card["weights_tensors_sha256"] == weights_digest(ev.net)  # the card describes these very weights
    for key in ("training_data", "training", "hardware", "validation", "command", "sanity"):
        assert key in card
    assert card["training"]["train_seconds"] > 0 and card["hardware"]["cpu_cores_visible"] >= 1
    v = card["validation"]
    assert v["heldout_openmoji"]["top1_cross_style"] >= MIN_TOP1_OPENMOJI
    assert v["heldout_openmoji"]["openmoji_share"] >= MIN_SHARE_OPENMOJI
    assert max(v["heldout_noto"]["openmoji_share"], v["heldout_twemoji"]["openmoji_share"]) <= MAX_SHARE_PRIOR
    assert abs(v["noise"]["top1"] - v["chance"]) <= 4 * v["noise"]["binomial_std_at_chance"]
    # the sanity table (evaluator_sanity): the Fréchet distance ranks every known case as it should
    sanity = card["sanity"]
    assert set(sanity["rows"]) == set(S.CASES) and set(sanity["verdicts"]) == set(S.METRICS)
    assert sanity["verdicts"]["fd_openmoji"]["trusted"] and sanity["verdicts"]["control_top1"]["trusted"]


def test_missing_weights_say_how_to_train(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="indomain world train-evaluators") as info:
        E.load_evaluators(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="indomain world train-evaluators"):
        E.load_evaluators(tmp_path / "x.safetensors")


# --------------------------------------------------------------------------- inputs and outputs


def test_inputs_and_output_shapes(ev: E.EmojiEvaluators, held) -> None:
    x = E.render_batch(held["openmoji"][:4], "openmoji")
    emb = ev.embed(x)
    assert emb.shape == (4, 128) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    probs = ev.style_probs(x)
    assert probs.shape == (4, len(STYLES)) and torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)
    assert ev.features(x).shape == (4, ev.net.feature_dim)
    # PIL at 32 px gives the same pixels as the tensor; other sizes, modes and (3, H, W) tensors are accepted.
    pil = _pil(x)
    assert torch.allclose(ev.embed(pil), emb, atol=1e-5)
    big = [im.resize((64, 64), PIL.Image.Resampling.BICUBIC) for im in pil]
    assert ev.embed(big).shape == (4, 128)
    assert ev.embed([pil[0].convert("RGBA"), x[1], torch.rand(3, 48, 48)]).shape == (3, 128)
    assert ev.embed(torch.nn.functional.interpolate(x, size=64, mode="bicubic").clamp(0, 1)).shape == (4, 128)
    assert ev.embed((x * 255).to(torch.uint8)).shape == (4, 128)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ev.embed(x * 2 - 1)
    with pytest.raises(TypeError):
        ev.embed(["not an image"])  # type: ignore[list-item]
    # The Fréchet space as an indomain.metrics extractor.
    extractor = ev.feature_extractor
    feats = extract_features(extractor, [x])
    assert torch.allclose(feats, ev.features(x), atol=1e-5)
    assert not extractor.train().training and not ev.net.training  # frozen: BatchNorm never leaves eval mode


def test_candidates_are_seeded(ev: E.EmojiEvaluators) -> None:
    targets = [0, 5, len(ev.world) - 1, 5]
    a = ev.candidates(targets, k=K, seed=3)
    assert a.shape == (4, K) and (a[:, 0] == targets).all()
    assert all(len(set(row)) == K for row in a.tolist())
    assert (a == ev.candidates(targets, k=K, seed=3)).all()
    assert not (a == ev.candidates(targets, k=K, seed=4)).all()
    with pytest.raises(ValueError):
        ev.candidates(targets, k=1)
    with pytest.raises(KeyError, match="not an emoji"):
        ev.emoji_index("a red apple emoji")
    assert ev.emoji_index("red apple") == ev.emoji_index("🍎") == ev.emoji_index("1F34E")


# --------------------------------------------------------------------------- sanity checks


def test_heldout_openmoji_retrieval(ev: E.EmojiEvaluators, held) -> None:
    emojis = held["openmoji"]
    x = E.render_batch(emojis, "openmoji")
    # The query's own render is left out of the gallery: the match has to come through Noto and Twemoji.
    assert ev.retrieval_top1(x, emojis, k=K, styles=("noto", "twemoji")) >= MIN_TOP1_OPENMOJI
    # With the default three-style gallery, on degraded copies (the exact render would match itself).
    degraded = T._augment(x, torch.Generator().manual_seed(0), p_clean=0.0)
    assert ev.retrieval_top1(degraded, [e.name for e in emojis], k=K) >= MIN_TOP1_OPENMOJI


@pytest.mark.parametrize("style", ["noto", "twemoji"])
def test_heldout_prior_style_retrieval(ev: E.EmojiEvaluators, held, style: str) -> None:
    emojis = held[style]
    others = [s for s in STYLES if s != style]
    assert ev.retrieval_top1(E.render_batch(emojis, style), emojis, k=K, styles=others) >= MIN_TOP1_OPENMOJI


def test_openmoji_share(ev: E.EmojiEvaluators, held) -> None:
    assert ev.openmoji_share(E.render_batch(held["openmoji"], "openmoji")) >= MIN_SHARE_OPENMOJI
    for style in ("noto", "twemoji"):
        assert ev.openmoji_share(E.render_batch(held[style], style)) <= MAX_SHARE_PRIOR
        # The prior-style renders of the held-out OpenMoji emoji too (trained-on renders, untrained emoji pairing).
        assert ev.openmoji_share(E.render_batch(held["openmoji"], style)) <= MAX_SHARE_PRIOR


def test_noise_retrieval_is_at_chance(ev: E.EmojiEvaluators) -> None:
    g = torch.Generator().manual_seed(7)
    n = 300
    noise = torch.rand(n, 3, 32, 32, generator=g)
    names = [ev.world[i] for i in torch.randint(len(ev.world), (n,), generator=g).tolist()]
    top1 = ev.retrieval_top1(noise, names, k=K)
    assert 0.0 <= top1 <= MAX_TOP1_NOISE


def test_frechet_separates_styles(ev: E.EmojiEvaluators, held) -> None:
    # All 276 held-out OpenMoji emoji: a Fréchet distance in 192-d is biased upwards on 40 samples (measured 8.9
    # for OpenMoji vs 41 for Twemoji there, against 1.6 vs 32 on the 276; the reference has 1,101 images).
    emojis = E.evaluator_holdout(ev.world)["openmoji"]
    fd = {s: ev.frechet_to_openmoji(E.render_batch(emojis, s)) for s in STYLES}
    assert fd["openmoji"] >= 0
    assert fd["twemoji"] >= FD_RATIO * fd["openmoji"] and fd["noto"] >= FD_RATIO * fd["openmoji"]
    # The reference can be given as stats or as images.
    x = E.render_batch(emojis, "openmoji")
    assert fd["twemoji"] - fd["openmoji"] >= 10  # and not merely a ratio of tiny numbers (random weights give that)
    assert ev.frechet_to_openmoji(x, reference=ev.reference_stats()) == pytest.approx(fd["openmoji"])
    assert ev.frechet_to_openmoji(x, reference=x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        ev.frechet_to_openmoji(x[:1])


def test_random_weights_fail_the_sanity_checks(ev: E.EmojiEvaluators, held) -> None:
    """A broken (untrained) evaluator must not pass the thresholds above."""
    torch.manual_seed(0)
    broken = E.EmojiEvaluators(E.EmojiNet())
    emojis = held["openmoji"]
    x = E.render_batch(emojis, "openmoji")
    top1 = broken.retrieval_top1(x, emojis, k=K, styles=("noto", "twemoji"))
    share_om = broken.openmoji_share(x)
    share_prior = max(broken.openmoji_share(E.render_batch(held[s], s)) for s in ("noto", "twemoji"))
    assert top1 < MIN_TOP1_OPENMOJI
    assert share_om < MIN_SHARE_OPENMOJI or share_prior > MAX_SHARE_PRIOR


# --------------------------------------------------------------------------- precision, recall and the sanity table


def test_precision_recall_in_the_evaluator_space(ev: E.EmojiEvaluators, held) -> None:
    x = E.render_batch(held["openmoji"], "openmoji")
    real = ev.precision_recall(x)
    assert (real.k, real.n_real, real.n_fake) == (3, 1101, N)  # the FD's reference: the seen emoji's OpenMoji renders
    assert real.precision >= 0.8 and real.recall >= 0.6  # measured 0.93 / 0.78 on the 276
    # a heavy blur (sigma 3 px) makes blobs: they leave the reference manifold, and cover none of it
    blob = ev.precision_recall(S.gaussian_blur(x, 3.0))
    assert blob.precision <= real.precision - 0.25 and blob.recall <= 0.15
    # another style is off the OpenMoji manifold
    assert ev.precision_recall(E.render_batch(held["noto"], "noto")).precision <= 0.3
    # discs of the drawing's mean colour look like OpenMoji's own circle emoji (precision stays high: see the card's
    # sanity table), but a set of them covers almost none of the reference: recall sees the collapse
    disc = ev.precision_recall(S.blob_disc(x))
    assert disc.recall <= 0.05 and real.recall - disc.recall >= 0.5
    assert ev.precision_recall(x, reference=x)[:2] == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3 images"):
        ev.precision_recall(x[:3])


def test_degradations() -> None:
    x = torch.ones(2, 3, 32, 32)
    x[0, :, 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # a red square on white
    x[1, :, 4:12, 20:28] = 0.0  # a small black square, top right
    assert torch.allclose(S.gaussian_blur(torch.ones(1, 3, 32, 32), 2.0), torch.ones(1, 3, 32, 32))
    assert torch.allclose(S.gaussian_blur(x, 1.5).mean((2, 3)), x.mean((2, 3)), atol=1e-4)  # ink is kept, spread out
    assert S.posterise(torch.tensor([0.2, 0.49, 0.51, 0.9]), 2).tolist() == [0.0, 0.0, 1.0, 1.0]
    disc = S.blob_disc(x)
    assert torch.allclose(disc[0, :, 16, 16], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)  # its colour, at its centre
    assert disc[1, :, 8, 24].max() < 0.05 and disc[1, :, 24, 8].min() > 0.99  # the black one stays top right
    area = (1 - disc[1]).amax(0).sum()
    assert 50 <= area <= 80  # about the 64 px of ink


def test_verdicts_by_hand() -> None:
    rows = {c: {m: 0.5 for m in S.METRICS} for c in S.CASES}
    for m in S.METRICS:
        rows["real"][m], rows["vae"][m] = (1.0, 2.0) if S.METRICS[m] == "lower" else (0.9, 0.8)
        for c in S.MUST_BE_WORSE[m]:
            rows[c][m] = 10.0 if S.METRICS[m] == "lower" else 0.1
    assert all(v["trusted"] for v in S._verdicts(rows).values())
    rows["blob_disc"]["precision_openmoji"] = 0.8  # ties with the VAE round trip: not strictly worse
    rows["noise"]["fd_openmoji"] = 1.5  # between real and the VAE round trip
    v = S._verdicts(rows)
    assert v["precision_openmoji"]["fooled_by"] == ["blob_disc"] and v["fd_openmoji"]["fooled_by"] == ["noise"]
    assert v["fd_openmoji"]["ranked_above_vae"] == ["blur", "posterise", "noise"]  # 0.5 beats the VAE's 2.0
    assert v["recall_openmoji"]["trusted"] and not v["fd_openmoji"]["trusted"]


def test_sanity_table_small(ev: E.EmojiEvaluators, tmp_path) -> None:
    """The whole table on 12 images per case, and writing it into a copy of the card."""
    from indomain.world.render import shipped_weights

    table = S.sanity_table(ev, n=12, vae_dir=shipped_weights("emoji-prior") / "vae")
    assert list(table["rows"]) == list(S.CASES) and all(row["n"] == 12 for row in table["rows"].values())
    rows = table["rows"]
    assert rows["real"]["fd_openmoji"] < rows["noise"]["fd_openmoji"] and rows["noise"]["precision_openmoji"] == 0.0
    assert rows["vae"]["control_top1"] >= 0.8 and rows["blob_disc"]["control_top1"] <= 0.6
    assert set(table["real_by_n"]) == {"24", "48", "96", "276"}
    assert "| blob_disc | 12 |" in S.sanity_markdown(table)
    card = tmp_path / "card.json"
    original = json.loads((E.default_evaluator_dir() / E.CARD_FILENAME).read_text(encoding="utf-8"))
    card.write_text(json.dumps(original), encoding="utf-8")
    S.write_sanity(table, card)
    written = json.loads(card.read_text(encoding="utf-8"))
    assert written["sanity"]["rows"]["real"]["n"] == 12
    assert {k: v for k, v in written.items() if k != "sanity"} == {k: v for k, v in original.items() if k != "sanity"}
    with pytest.raises(ValueError, match="n must be in"):
        S.sanity_cases(ev, n=111)


def test_evaluator_sanity_command(tmp_path, capsys) -> None:
    """`indomain world evaluator-sanity --write-card` on a copy of the shipped evaluators writes the copy's card."""
    import shutil

    from indomain.cli import main
    from indomain.world.render import shipped_weights

    for name in (E.WEIGHTS_FILENAME, E.CARD_FILENAME):
        shutil.copy(E.default_evaluator_dir() / name, tmp_path / name)
    argv = ["world", "evaluator-sanity", "--evaluators", str(tmp_path), "--vae", str(shipped_weights("emoji-prior") / "vae"), "--n", "8"]
    assert main([*argv, "--write-card"]) == 0
    assert "| noise | 8 |" in capsys.readouterr().out
    sanity = json.loads((tmp_path / E.CARD_FILENAME).read_text(encoding="utf-8"))["sanity"]
    assert sanity["settings"]["n"] == 8 and sanity["command"] == " ".join(["indomain", *argv, "--write-card"])


# --------------------------------------------------------------------------- the scorer


def test_scorer_columns(ev: E.EmojiEvaluators, held) -> None:
    emojis = held["openmoji"]
    images = _pil(E.render_batch(emojis, "openmoji"))
    prompts: list[str | None] = [e.name for e in emojis]
    scorer = ev.scorer(k=K)
    out = scorer(images, prompts)
    assert set(out) == COLUMNS and all(isinstance(v, float) for v in out.values())
    assert out["control_top1"] == pytest.approx(ev.retrieval_top1(images, prompts, k=K))  # type: ignore[arg-type]
    assert out["openmoji_share"] == pytest.approx(ev.openmoji_share(images))
    assert out["fd_openmoji"] == pytest.approx(ev.frechet_to_openmoji(images), rel=1e-6)
    pr = ev.precision_recall(images)
    assert (out["precision_openmoji"], out["recall_openmoji"]) == pytest.approx((pr.precision, pr.recall))
    assert out["openmoji_share"] >= MIN_SHARE_OPENMOJI
    # Unconditional images: no control column value; unknown prompts are refused, or mapped by prompt_to_name.
    few = scorer(images[:3], [None, None, None])
    assert math.isnan(few["control_top1"])
    assert math.isnan(few["precision_openmoji"]) and math.isnan(few["recall_openmoji"])  # k = 3 needs 4 images
    assert math.isfinite(scorer(images[:4], [None] * 4)["recall_openmoji"])
    with pytest.raises(KeyError, match="emoji names"):
        scorer(images[:2], ["an emoji of a red apple", None])
    mapped = ev.scorer(k=K, prompt_to_name=lambda p: p.removeprefix("emoji: "))
    assert mapped(images, [f"emoji: {p}" for p in prompts])["control_top1"] == out["control_top1"]


@pytest.mark.parametrize("name", ["sepia", "sticker"])
def test_domain_scorer(ev: E.EmojiEvaluators, held, name: str) -> None:
    """A derived domain's scorer: FD and precision/recall against its own renders, control against two galleries."""
    from indomain.world.domains import get_domain

    domain = get_domain(name)
    emojis = held["openmoji"]  # held out of domain training in every domain (the same split)
    own = [domain.render(e) for e in emojis]
    other = _pil(E.render_batch(emojis, "openmoji"))
    names: list[str | None] = [e.name for e in emojis]
    scorer = ev.scorer(k=K, domain=name)
    mine, theirs = scorer(own, names), scorer(other, names)
    assert set(mine) == {"control_top1", "control_domain_top1", f"fd_{name}", f"precision_{name}", f"recall_{name}"}
    assert mine[f"fd_{name}"] < theirs[f"fd_{name}"] / 3  # its own style is far closer than OpenMoji
    assert mine[f"precision_{name}"] > theirs[f"precision_{name}"]
    assert mine["control_domain_top1"] == 1.0  # a real render is its own gallery entry: trivially retrieved
    assert mine["control_top1"] >= 0.8 and theirs["control_domain_top1"] >= 0.5  # identity survives the style (chance 0.1)
    noise = _pil(torch.rand(len(emojis), 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert scorer(noise, names)["control_domain_top1"] <= 0.3
    assert ev.reference_features(name).shape == ev.reference_features().shape


def test_scorer_in_evaluate(ev: E.EmojiEvaluators, held, tmp_path) -> None:
    """The scorer's columns land in indomain.evaluate's result row, scored from saved PNGs."""
    from indomain.evaluate import EvalConfig, Method, Setting, score_setting

    emojis = held["openmoji"][:12]
    files = []
    for i, im in enumerate(_pil(E.render_batch(emojis, "openmoji"))):
        files.append(tmp_path / f"{i:06d}.png")
        im.save(files[-1])
    config = EvalConfig(out=tmp_path / "eval", num_images=len(files), prompts=[e.name for e in emojis])
    setting = Setting(Method(name="real", prior="unused"), 0.0, 0.0)
    values, _ = score_setting(files, setting, config, extractor=None, real_stats=None, scorer=ev.scorer(k=K))
    assert COLUMNS <= set(values) and all(math.isfinite(values[c]) for c in COLUMNS)


# --------------------------------------------------------------------------- training and validation code paths


def test_train_and_validate_smoke(tmp_path) -> None:
    """A 2-step training run writes loadable weights and a card; validation adds its figures."""
    file = T.train_evaluators(tmp_path, steps=2, batch_size=8, validate=False, log=None)
    assert file == tmp_path / E.WEIGHTS_FILENAME
    small = E.load_evaluators(tmp_path)
    assert small.net.config == E.EmojiNet().config
    res = T.validate_evaluators(small, limit=5, n_noise=10, log=None)
    card = json.loads((tmp_path / E.CARD_FILENAME).read_text(encoding="utf-8"))
    assert card["training"]["steps"] == 2 and card["validation"]["noise"]["n"] == 10
    assert set(res) >= {"heldout_openmoji", "heldout_noto", "heldout_twemoji", "noise"}


def test_train_evaluators_is_a_world_command(tmp_path) -> None:
    from indomain.cli import main

    assert main(["world", "train-evaluators", "--out", str(tmp_path / "ev"), "--steps", "2", "--batch-size", "8",
                 "--no-validate"]) == 0
    assert E.load_evaluators(tmp_path / "ev").net.config == E.EmojiNet().config


def test_holdout_protocol() -> None:
    from indomain.world.render import list_emoji, split_emoji

    world = list_emoji()
    h = E.evaluator_holdout(world)
    assert h["openmoji"] == split_emoji(world, seed=0)[1]
    sets = {s: {e.codepoint for e in v} for s, v in h.items()}
    assert not (sets["noto"] & sets["twemoji"]) and not (sets["openmoji"] & (sets["noto"] | sets["twemoji"]))
    assert len(sets["noto"]) == len(sets["twemoji"]) == round(0.08 * len(world))
    assert E.evaluator_holdout(world) == h
