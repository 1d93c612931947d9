"""Editing in the emoji world: move held-out Noto/Twemoji emoji into the OpenMoji style, keep which
emoji they are. Identity (`control_top1` with the emoji's name, top-1 among 10, chance 0.10) and OpenMoji share
(the evaluators' style head) for each method at each strength.

    python experiments/editing_emoji.py --models outputs/demo --out outputs/editing

`--models` is a folder with the trained `ours` (null-text domain model) and `finetune` (full fine-tune, caption
"openmoji style") of `indomain demo` / `indomain world benchmark`. Writes results.json, results.md and
identity_style.png (one line per method, one point per strength), one grid per method at the middle strength and
examples.png (sources, then ours with SDEdit, ours with inversion and rectified img2img at that strength) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="outputs/demo", help="folder with ours/ and finetune/ (default: %(default)s)")
    parser.add_argument("--out", default="outputs/editing", help="output folder (default: %(default)s)")
    parser.add_argument("--num-emoji", type=int, default=48, help="held-out emoji, half rendered Noto, half Twemoji")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--steps", type=int, default=20, help="sampler steps at strength 1 (default: %(default)s)")
    parser.add_argument("--weight", type=float, default=2.5, help="w_d and w_c, and the fine-tunes' CFG scale")
    parser.add_argument("--ours-domain-guidance-scale", "--ours-domain-scale", type=float, default=None,
                        help="ours' w_d when it should differ from --weight (for example the one `indomain tune` chose; "
                             "--ours-domain-scale: an alias kept from before)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from diffusers import UNet2DConditionModel

    from indomain.editing import InDomainImg2ImgPipeline
    from indomain.world.benchmark import DOMAIN_CAPTION
    from indomain.world.evaluators import load_evaluators
    from indomain.world.prior import emoji_prior_dir
    from indomain.world.render import evenly_spaced, list_emoji, render, split_emoji

    models, out = Path(args.models), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = str(emoji_prior_dir())
    _, held_out = split_emoji(list_emoji(), seed=args.seed)
    emoji = evenly_spaced(held_out, args.num_emoji)
    styles = ["noto" if i % 2 == 0 else "twemoji" for i in range(len(emoji))]
    sources = [render(e, s, 32) for e, s in zip(emoji, styles)]
    names = [e.name for e in emoji]
    styled = [f"{DOMAIN_CAPTION}, {n}" for n in names]
    w = args.weight
    w_d = w if args.ours_domain_guidance_scale is None else args.ours_domain_guidance_scale

    ours = InDomainImg2ImgPipeline.from_pretrained(prior, domain_unet=models / "ours")
    finetune_unet = UNet2DConditionModel.from_pretrained(models / "finetune")
    finetune = InDomainImg2ImgPipeline.from_pretrained(prior, unet=finetune_unet)
    rectified = InDomainImg2ImgPipeline.from_pretrained(prior, domain_unet=models / "finetune")
    for p in (ours, finetune, rectified):
        p.set_progress_bar_config(disable=True)
    methods = {  # name -> (pipeline, call arguments)
        "prior img2img": (ours, dict(prompt=names, domain_guidance_scale=0, guidance_scale=w)),
        "fine-tune + CFG img2img": (finetune, dict(prompt=styled, domain_guidance_scale=0, guidance_scale=w)),
        "rectified img2img": (rectified, dict(domain_prompt=styled, domain_guidance_scale=w, guidance_scale=0)),
        "ours, SDEdit": (ours, dict(prompt=names, domain_guidance_scale=w_d, guidance_scale=w)),
        "ours, inversion": (ours, dict(prompt=names, domain_guidance_scale=w_d, guidance_scale=w, method="invert")),
    }
    scorer = load_evaluators().scorer(k=10, seed=args.seed)
    rows = [{"method": "source (no edit)", "strength": 0.0, **_score(scorer, sources, names)}]
    start, middle = time.time(), {}
    for name, (pipe, kw) in methods.items():
        for strength in args.strengths:
            images = pipe(image=sources, strength=strength, num_inference_steps=args.steps,
                          generator=[torch.Generator().manual_seed(args.seed + i) for i in range(len(sources))], **kw).images
            rows.append({"method": name, "strength": strength, **_score(scorer, images, names)})
            print(rows[-1], flush=True)
            if strength == args.strengths[len(args.strengths) // 2]:
                middle[name] = images[:8]
                _grid(sources[:8], images[:8]).save(out / f"{name.replace(' ', '_').replace(',', '').replace('+', 'plus')}.png")
    seconds = time.time() - start
    _grid(sources[:8], [im for name in ("ours, SDEdit", "ours, inversion", "rectified img2img") for im in middle[name]]
          ).save(out / "examples.png")

    lines = ["| method | strength | control_top1 | openmoji_share |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['strength']:.1f} | {r['control_top1']:.3f} | {r['openmoji_share']:.3f} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "n": len(sources), "seconds": seconds, "rows": rows}, indent=2))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in methods:
        pts = [r for r in rows if r["method"] == name]
        ax.plot([r["openmoji_share"] for r in pts], [r["control_top1"] for r in pts], marker="o", label=name)
        for r in pts:
            ax.annotate(f"{r['strength']:.1f}", (r["openmoji_share"], r["control_top1"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    src = rows[0]
    ax.scatter([src["openmoji_share"]], [src["control_top1"]], marker="*", s=120, color="black", label="source (no edit)")
    ax.set_xlabel("OpenMoji share (style moved into the domain)")
    ax.set_ylabel("identity kept (control_top1)")
    ax.set_title(f"Editing held-out emoji into OpenMoji, N={len(sources)} per point")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "identity_style.png", dpi=120)
    print("\n".join(lines))
    print(f"{seconds / 60:.1f} min; wrote {out}")


def _score(scorer, images, names) -> dict:
    values = scorer(images, names)
    return {"control_top1": values["control_top1"], "openmoji_share": values["openmoji_share"]}


def _grid(before, after):
    from indomain.outputs import make_grid

    return make_grid([im.resize((64, 64)) for im in before + after], ncols=len(before))


if __name__ == "__main__":
    main()
