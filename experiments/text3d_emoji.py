"""Text-to-3D in the emoji world: score distillation with and without the OpenMoji domain term.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/text3d_emoji.py --out outputs/text3d

1. The OpenMoji null-text domain model: ``<out>/openmoji-domain`` if it is there, else trained as
   `indomain world benchmark` trains ``ours`` (OpenMoji renders of the *seen* emoji, 300 steps, batch 16,
   lr 1e-4, EMA 0.99, seed 0).
2. Prompts: ``--num-prompts`` *held-out* emoji names, evenly spaced over `split_emoji`'s held-out list (no choice by hand).
3. One 3-D object per prompt and setting with `indomain.text3d.text_to_3d`, same seed: ``prior`` (w_d = 0) and
   ``prior + openmoji`` (w_d = ``--domain-guidance-scale``), both w_c = ``--guidance-scale``, no view-dependent prompts (step 5
   says why; ``--view-prompts`` adds ``prior + openmoji`` with them). Each run keeps its state in its folder, so a killed benchmark continues where it stopped.
4. Each object (and, for reference, the initial blob every run starts from) is rendered from 8 azimuths (0°, 45°, ..., 315°; elevation 10°) and scored with the shipped emoji
   evaluators: ``control_top1`` (the prompted emoji ranks first among 10 candidates: it and 9 others drawn with seed 0,
   the *same* 10 for every view of an object, so views can be compared), ``openmoji_share`` (style head says OpenMoji)
   and the multi-view consistency (the largest number of the 8 views that agree on the top-1 candidate).
5. A 2-D check of view-dependent prompting: the prior alone (w_c = 5, DDIM 20 steps) on 16 held-out names, plain and
   with "front/side/back view of"; the emoji prior never saw such phrases.

Writes ``<out>/results.json``, ``<out>/results.md`` and the turntable-frame grid ``--image``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch

from indomain import InDomainPipeline
from indomain.nerf import orbit_cameras, tensor_to_pil
from indomain.outputs import make_grid
from indomain.text3d import Text3DConfig, load_field, render_views, text_to_3d
from indomain.train import TrainConfig, train
from indomain.world.benchmark import render_domain
from indomain.world.evaluators import load_evaluators
from indomain.world.prior import emoji_prior_dir
from indomain.world.render import STYLES, evenly_spaced, get_emoji, list_emoji, render, split_emoji

VIEWS = 8
BLOB = "initial blob (step 0)"  # a reference row: a grey ball already resembles some round emoji
EVAL_ELEVATION, EVAL_DISTANCE, EVAL_FOVY = 10.0, 2.2, 40.0  # the middle of Text3DConfig's camera ranges


def domain_model(out: Path, prior: str, seed: int) -> Path:
    folder = out / "openmoji-domain"
    if not (folder / "config.json").is_file():
        images, _, _ = render_domain(out, 32, None)
        train(TrainConfig(prior=prior, images=str(images), output=str(folder), resolution=32, train_batch_size=16,
                          max_train_steps=300, learning_rate=1e-4, ema_decay=0.99, checkpointing_steps=300,
                          checkpoints_total_limit=1, seed=seed, overwrite=True))
    return folder


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def optimise(pipe, prior: str, domain: Path, prompt: str, folder: Path, args: argparse.Namespace, w_d: float,
             view_dependent: bool) -> Path:
    done = folder / "settings.json"
    step = json.loads(done.read_text())["step"] if done.is_file() else 0
    if step >= args.steps and (folder / "turntable.gif").is_file():
        return folder
    config = Text3DConfig(prior=prior, prompt=prompt, out=str(folder), domain=str(domain) if w_d else None,
                          domain_guidance_scale=w_d,
                          guidance_scale=args.guidance_scale, steps=args.steps, view_dependent=view_dependent, seed=args.seed,
                          resume=step > 0, overwrite=step == 0)  # a run killed before its first save starts over
    return text_to_3d(config, pipe=pipe)


def score(ev, images: torch.Tensor, name: str, k: int = 10, seed: int = 0) -> dict:
    """Per-view hits against one fixed candidate set, the OpenMoji verdicts and the views' agreement on the top-1."""
    cand = torch.from_numpy(ev.candidates([ev.emoji_index(name)], k, seed)[0])  # (k,) the target first
    emb = ev.embed(images)  # (V, 128)
    sims = torch.stack([emb @ ev.gallery(s)[cand].T for s in STYLES]).mean(0)  # (V, k): mean cosine over styles
    top1 = sims.argmax(1)
    openmoji = ev.style_probs(images).argmax(1) == STYLES.index("openmoji")
    return {"hits": (top1 == 0).int().tolist(), "openmoji": openmoji.int().tolist(), "top1": top1.tolist(),
            "consistency": int(torch.bincount(top1).max())}


def view_prompt_check(prior: str, held_out: list[str], ev) -> dict:
    names = evenly_spaced(held_out, 16)
    pipe = InDomainPipeline.from_pretrained(prior)
    pipe.set_progress_bar_config(disable=True)
    result = {}
    for template in ("{}", "front view of {}", "side view of {}", "back view of {}"):
        images = pipe([template.format(n) for n in names], domain_guidance_scale=0, guidance_scale=5.0,
                      num_inference_steps=20, generator=[torch.Generator().manual_seed(i) for i in range(len(names))]).images
        result[template] = ev.retrieval_top1(images, names, k=10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/text3d")
    parser.add_argument("--num-prompts", type=int, default=6)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--guidance-scale", type=float, default=25.0, help="w_c (diffusers' convention)")
    parser.add_argument("--domain-guidance-scale", "--domain-scale", type=float, default=25.0,
                        help="w_d of the 'prior + openmoji' setting (--domain-scale: an alias kept from before)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", default="docs/images/text3d.png")
    parser.add_argument("--view-prompts", action="store_true",
                        help="add a third setting: prior + openmoji with view-dependent prompts ('front view of ...')")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start, out = time.time(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = str(emoji_prior_dir())
    domain = domain_model(out, prior, args.seed)
    _, held_out = split_emoji(list_emoji(), seed=0)
    prompts = [e.name for e in evenly_spaced(held_out, args.num_prompts)]
    print("prompts:", prompts)

    pipe = InDomainPipeline.from_pretrained(prior, domain_unet=str(domain))
    settings = {"prior": (0.0, False), "prior + openmoji": (args.domain_guidance_scale, False)}  # (w_d, view prompts)
    if args.view_prompts:
        settings["prior + openmoji, view prompts"] = (args.domain_guidance_scale, True)
    folders = {(s, p): out / "3d" / slug(s) / slug(p) for s in settings for p in prompts}
    for (setting, prompt), folder in folders.items():
        optimise(pipe, prior, domain, prompt, folder, args, *settings[setting])

    print(f"3-D runs done at {(time.time() - start) / 60:.1f} min", flush=True)
    ev = load_evaluators()
    cams = orbit_cameras(VIEWS, elevation=EVAL_ELEVATION, distance=EVAL_DISTANCE, fovy=EVAL_FOVY)
    results, rows = {}, []
    blob = Text3DConfig(prior=prior, prompt="", out="", seed=args.seed).make_field()  # what every run starts from
    for prompt in prompts:
        emoji = get_emoji(prompt)
        results[f"{BLOB} | {prompt}"] = score(ev, render_views(blob, cams, 32, 48), prompt) | {"setting": BLOB}
        for setting in settings:
            field, _ = load_field(folders[setting, prompt] / "field.safetensors")
            images = render_views(field, cams, 32, 48)
            results[f"{setting} | {prompt}"] = score(ev, images, prompt) | {"setting": setting, "prompt": prompt}
            reference = render(emoji, "openmoji" if settings[setting][0] else "noto", size=32)
            rows += [im.resize((96, 96), 0) for im in [reference, *tensor_to_pil(images)]]
    Path(args.image).parent.mkdir(parents=True, exist_ok=True)
    make_grid(rows, ncols=VIEWS + 1).save(args.image)

    print(f"scored at {(time.time() - start) / 60:.1f} min", flush=True)
    view_check = view_prompt_check(prior, [e.name for e in held_out], ev)
    summary = {"args": vars(args), "prompts": prompts, "objects": results, "view_prompt_check_2d": view_check,
               "minutes": round((time.time() - start) / 60, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(table(results, [BLOB, *settings], prompts, view_check) + "\n")
    print((out / "results.md").read_text())


def table(results: dict, settings: list[str], prompts: list[str], view_check: dict) -> str:
    n = len(prompts)
    azimuths = [f"{360 * i // VIEWS}°" for i in range(VIEWS)]
    lines = [f"Per view, over {n} held-out prompts (one object each):", "",
             "| setting | score | " + " | ".join(azimuths) + " | mean |", "|---|---|" + "---|" * (VIEWS + 1)]
    for metric, key in (("control_top1", "hits"), ("openmoji_share", "openmoji")):
        for setting in settings:
            per_view = [sum(results[f"{setting} | {p}"][key][v] for p in prompts) / n for v in range(VIEWS)]
            lines.append(f"| {setting} | {metric} | " + " | ".join(f"{x:.2f}" for x in per_view)
                         + f" | **{sum(per_view) / VIEWS:.2f}** |")
    lines += ["", f"Multi-view consistency (views of {VIEWS} agreeing on the top-1 of the same 10 candidates):", "",
              "| prompt | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for p in prompts:
        lines.append(f"| {p} | " + " | ".join(f"{results[f'{s} | {p}']['consistency']}/{VIEWS}" for s in settings) + " |")
    lines += ["", "2-D check, the prior alone on 16 held-out names (control_top1):", "",
              "| prompt template | control_top1 |", "|---|---|"]
    lines += [f"| `{t}` | {v:.2f} |" for t, v in view_check.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
