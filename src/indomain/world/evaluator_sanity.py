"""Do the evaluators' metrics rank known cases correctly? The sanity table of the evaluators' card.

    table = sanity_table(load_evaluators())
    write_sanity(table)                         # into indomain_emoji/evaluators/card.json under "sanity"
    print(sanity_markdown(table))

    indomain world evaluator-sanity --write-card    # the same from the command line

Every case has ``n`` images (default 110, the size of the smallest held-out set, so that the N-dependent scores,
FD and recall, compare like with like) built from renders the evaluators never trained on (``evaluator_holdout``):

* ``real``: held-out OpenMoji renders (``n`` evenly spaced of the 276);
* ``vae``: the same renders through the shipped emoji prior's VAE (encode, latent mean, decode): the best a
  generator working in that latent space can reach;
* mild degradations of ``real``: ``blur`` (Gaussian, sigma 1.5 px), ``posterise`` (2 levels per channel);
* blobs, the failure seen in samples at high domain weights: ``blob_blur`` (Gaussian, sigma 3 px), ``blob_disc`` (a soft
  disc of the drawing's mean colour, at its centre and of its area), ``blob_ghost`` (70% that disc over 30% of the
  sigma-1.5 blur: a blob with a ghosted outline);
* another style: ``noto`` and ``twemoji`` held-out renders;
* ``noise``: uniform noise with random emoji names.

All images are quantised to 8 bits (as a saved PNG is) and scored with :meth:`EmojiEvaluators.scorer`, the columns
of every benchmark. A metric is **trusted** where it scores each case of :data:`MUST_BE_WORSE` strictly worse than
both ``real`` and ``vae``; the mild degradations are reported, not judged (they can be closer to the real renders
than the VAE round trip is: the VAE blurs and speckles).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..outputs import atomic_write_text, to_json
from .evaluators import (
    CARD_FILENAME,
    INPUT_SIZE,
    EmojiEvaluators,
    default_evaluator_dir,
    evaluator_holdout,
    render_batch,
)
from .prior import vae_round_trip
from .render import STYLES, Emoji, evenly_spaced

__all__ = [
    "CASES",
    "METRICS",
    "MUST_BE_WORSE",
    "REAL_BY_N",
    "blob_disc",
    "gaussian_blur",
    "posterise",
    "sanity_cases",
    "sanity_markdown",
    "sanity_table",
    "write_sanity",
]

#: The cases, in table order, with a one-line description each.
CASES: dict[str, str] = {
    "real": "held-out OpenMoji renders",
    "vae": "real through the emoji prior's VAE (encode, mean, decode)",
    "blur": "real, Gaussian blur sigma 1.5 px",
    "posterise": "real, posterised to 2 levels per channel",
    "blob_blur": "real, Gaussian blur sigma 3 px",
    "blob_disc": "soft disc of the drawing's mean colour, centre and area",
    "blob_ghost": "70% blob_disc over 30% blur: a blob with a ghosted outline",
    "noto": "held-out Noto renders (another style)",
    "twemoji": "held-out Twemoji renders (another style)",
    "noise": "uniform noise, random emoji names",
}
#: The scorer's columns and which way is better.
METRICS: dict[str, str] = {
    "fd_openmoji": "lower",
    "openmoji_share": "higher",
    "precision_openmoji": "higher",
    "recall_openmoji": "higher",
    "control_top1": "higher",
}
#: Sizes of the real-renders-only rows that show how FD, precision and recall move with N.
REAL_BY_N = (24, 48, 96, 276)
_NOT_OPENMOJI = ("blob_blur", "blob_disc", "blob_ghost", "noto", "twemoji", "noise")
#: Per metric, the cases it must score strictly worse than both ``real`` and ``vae``. Fidelity: every blob, other
#: style and noise. Control (is it the named emoji?): only the cases that erase the drawing; another style keeps it.
MUST_BE_WORSE: dict[str, tuple[str, ...]] = {
    "fd_openmoji": _NOT_OPENMOJI,
    "openmoji_share": _NOT_OPENMOJI,
    "precision_openmoji": _NOT_OPENMOJI,
    "recall_openmoji": _NOT_OPENMOJI,
    "control_top1": ("blob_disc", "noise"),
}


# --------------------------------------------------------------------------- degradations of (N, 3, H, W) in [0, 1]


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (kernel radius ``ceil(3 sigma)``, replicate padding: the white page stays white)."""
    r = math.ceil(3 * sigma)
    taps = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    k = k / k.sum()
    B, C, H, W = x.shape
    z = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="replicate")
    z = F.conv2d(z, k.view(1, 1, 1, -1).expand(B * C, 1, 1, -1), groups=B * C)
    z = F.conv2d(z, k.view(1, 1, -1, 1).expand(B * C, 1, -1, 1), groups=B * C)
    return z.view(B, C, H, W)


def posterise(x: Tensor, levels: int = 2) -> Tensor:
    """Each channel rounded to ``levels`` evenly spaced values."""
    return (x * (levels - 1)).round() / (levels - 1)


def blob_disc(x: Tensor, softness: float = 1.5) -> Tensor:
    """A soft disc on white, per image: the ink-weighted mean colour, at the ink's centroid, with the ink's area.

    Ink is ``max over channels of (1 - x)``, so white paper has none; pixels with ink > 0.1 make the area.
    """
    B, _, H, W = x.shape
    ink = (1 - x).amax(1)  # (B, H, W)
    w = ink / ink.sum((1, 2), keepdim=True).clamp_min(1e-6)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=x.dtype), torch.arange(W, dtype=x.dtype), indexing="ij")
    cy, cx = (w * yy).sum((1, 2)), (w * xx).sum((1, 2))  # (B,)
    radius = ((ink > 0.1).sum((1, 2)).to(x.dtype) / math.pi).sqrt()
    colour = torch.einsum("bchw,bhw->bc", x, w)  # (B, 3)
    dist = ((yy - cy.view(B, 1, 1)) ** 2 + (xx - cx.view(B, 1, 1)) ** 2).sqrt()
    alpha = torch.sigmoid((radius.view(B, 1, 1) - dist) / (softness / 2)).unsqueeze(1)  # (B, 1, H, W)
    return 1 - alpha + alpha * colour.view(B, 3, 1, 1)


# --------------------------------------------------------------------------- the table


def _quantise(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def sanity_cases(ev: EmojiEvaluators, n: int = 110, seed: int = 0,
                 vae_dir: str | os.PathLike | None = None) -> dict[str, tuple[Tensor, list[Emoji]]]:
    """Every case of :data:`CASES`: ``(images (n, 3, 32, 32) in [0, 1], 8-bit values; the emoji they show)``."""
    held = evaluator_holdout(ev.world)
    if not 4 <= n <= min(len(v) for v in held.values()):
        raise ValueError(f"n must be in [4, {min(len(v) for v in held.values())}] (the held-out set sizes), got {n}")
    om = evenly_spaced(held["openmoji"], n)
    real = render_batch(om, "openmoji")
    disc = blob_disc(real)
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, INPUT_SIZE, INPUT_SIZE, generator=g)
    noise_names = [ev.world[i] for i in torch.randint(len(ev.world), (n,), generator=g).tolist()]
    cases = {
        "real": (real, om),
        "vae": (vae_round_trip(real, vae_dir), om),
        "blur": (gaussian_blur(real, 1.5), om),
        "posterise": (posterise(real, 2), om),
        "blob_blur": (gaussian_blur(real, 3.0), om),
        "blob_disc": (disc, om),
        "blob_ghost": (0.7 * disc + 0.3 * gaussian_blur(real, 1.5), om),
        **{s: (render_batch(evenly_spaced(held[s], n), s), evenly_spaced(held[s], n)) for s in ("noto", "twemoji")},
        "noise": (noise, noise_names),
    }
    assert list(cases) == list(CASES)
    return {name: (_quantise(x), emojis) for name, (x, emojis) in cases.items()}


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "lower" else a > b


def _verdicts(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    out = {}
    for metric, direction in METRICS.items():
        worst_good = max if direction == "lower" else min
        bar = worst_good(rows["real"][metric], rows["vae"][metric])
        must = MUST_BE_WORSE[metric]
        fooled = [c for c in must if not _better(bar, rows[c][metric], direction)]
        degradations = [c for c in CASES if c not in ("real", "vae", "noto", "twemoji", "noise")]
        out[metric] = {
            "better": direction,
            "must_be_worse": list(must),
            "fooled_by": fooled,
            "trusted": not fooled,
            "real_beats_every_degradation": all(_better(rows["real"][metric], rows[c][metric], direction)
                                                for c in degradations),
            "ranked_above_vae": [c for c in CASES if c not in ("real", "vae")
                                 and _better(rows[c][metric], rows["vae"][metric], direction)],
        }
    return out


def sanity_table(ev: EmojiEvaluators, n: int = 110, k: int = 10, pr_k: int = 3, seed: int = 0,
                 vae_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every metric of ``ev.scorer(k, seed, pr_k=pr_k)`` on every case of :func:`sanity_cases`, and the verdicts.

    Also ``control_top1_cross_style``: retrieval with the gallery of the other two styles only (the default gallery
    holds each OpenMoji-derived case's own clean render, which flatters the degradations).
    """
    t0 = time.perf_counter()
    scorer = ev.scorer(k=k, seed=seed, pr_k=pr_k)
    rows: dict[str, dict[str, float]] = {}
    for name, (x, emojis) in sanity_cases(ev, n, seed, vae_dir).items():
        own = name if name in ("noto", "twemoji") else "openmoji"
        others = [s for s in STYLES if s != own]
        rows[name] = {
            "n": x.shape[0],
            **scorer(x, [e.name for e in emojis]),  # type: ignore[arg-type]
            "control_top1_cross_style": ev.retrieval_top1(x, emojis, k, seed, styles=others),
        }
    # How the N-dependent scores move with N on real renders alone (the cases above all have n images).
    held = evaluator_holdout(ev.world)["openmoji"]
    by_n = {}
    for size in sorted({s for s in REAL_BY_N if s <= len(held)}):
        x = render_batch(evenly_spaced(held, size), "openmoji")
        pr = ev.precision_recall(x, k=pr_k)
        by_n[str(size)] = {"fd_openmoji": ev.frechet_to_openmoji(x), "precision_openmoji": pr.precision,
                           "recall_openmoji": pr.recall}
    return {
        "cases": dict(CASES),
        "rows": rows,
        "verdicts": _verdicts(rows),
        "real_by_n": by_n,
        "settings": {"n": n, "k_control": k, "k_precision_recall": pr_k, "seed": seed,
                     "reference": "OpenMoji renders of the split_emoji(seed=0) seen emoji (1,101)"},
        "seconds": round(time.perf_counter() - t0, 1),
        "command": f"sanity_table(load_evaluators(), n={n}, k={k}, pr_k={pr_k}, seed={seed})",
    }


def sanity_markdown(table: dict[str, Any]) -> str:
    """The table and the verdicts as markdown."""
    cols = [*METRICS, "control_top1_cross_style"]
    arrow = {m: (" ↓" if d == "lower" else " ↑") for m, d in METRICS.items()} | {"control_top1_cross_style": " ↑"}
    lines = ["| case | n | " + " | ".join(c + arrow[c] for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, row in table["rows"].items():
        lines.append(f"| {name} | {row['n']} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    lines += ["", "| metric | trusted | fooled by (scores at least as well as real or VAE) | real beats every "
              "degradation | ranked above the VAE round trip |", "|---|---|---|---|---|"]
    yes_no = {True: "yes", False: "no"}
    for metric, v in table["verdicts"].items():
        lines.append(f"| {metric} | {yes_no[v['trusted']]} | {', '.join(v['fooled_by']) or '—'} | "
                     f"{yes_no[v['real_beats_every_degradation']]} | {', '.join(v['ranked_above_vae']) or '—'} |")
    if table.get("real_by_n"):
        by_n = table["real_by_n"]
        lines += ["", "Real held-out OpenMoji renders at other N:", "",
                  "| n | " + " | ".join(by_n) + " |", "|---|" + "---|" * len(by_n)]
        for metric in ("fd_openmoji", "precision_openmoji", "recall_openmoji"):
            lines.append(f"| {metric} | " + " | ".join(f"{v[metric]:.3f}" for v in by_n.values()) + " |")
    return "\n".join(lines) + "\n"


def write_sanity(table: dict[str, Any], card_path: str | os.PathLike | None = None) -> Path:
    """Put ``table`` under ``"sanity"`` in the card (default: the shipped ``card.json``); other keys stay as they are."""
    path = Path(card_path) if card_path is not None else default_evaluator_dir() / CARD_FILENAME
    card = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    card["sanity"] = table
    atomic_write_text(path, to_json(card, indent=1, ensure_ascii=False) + "\n")
    return path


def run(evaluators: str | os.PathLike | None = None, *, n: int = 110, seed: int = 0, write_card: bool = False,
        vae_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """`indomain world evaluator-sanity`: the table for the evaluators at ``evaluators`` (default: the shipped ones)."""
    from .evaluators import load_evaluators

    ev = load_evaluators(evaluators)
    table = sanity_table(ev, n=n, seed=seed, vae_dir=vae_dir)
    flags = [f"--evaluators {evaluators}" if evaluators else "", f"--vae {vae_dir}" if vae_dir else "",
             f"--n {n}" if n != 110 else "", f"--seed {seed}" if seed else "", "--write-card" if write_card else ""]
    table["command"] = " ".join(["indomain world evaluator-sanity", *filter(None, flags)])
    log(sanity_markdown(table))
    if write_card:
        assert ev.path is not None
        log(f"wrote the table under 'sanity' in {write_sanity(table, ev.path.parent / CARD_FILENAME)}")
    return table
