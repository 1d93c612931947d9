"""Spatial control in the emoji world: edge-map ControlNet of the emoji prior, routed to the prior's
branches only or to every branch. Held-out emoji (names the ControlNet never saw), control = the `edge_map` of their
Noto / Twemoji render (alternating); one seed per emoji; DPM++ at --steps; w_d = w_c = --weight (ours: w_d = --ours-domain-guidance-scale when given).

    OMP_NUM_THREADS=1 python experiments/emoji_controlnet.py \
        --models outputs/demo --out outputs/emoji-controlnet --num-emoji 48

Scores per method: edge F1 (control adherence, `indomain.world.controlnet.edge_f1`, 1 px tolerance, 32 px),
control_top1 (identity, top-1 among 10, chance 0.10, always against the emoji's name, also for the
empty-prompt sanity rows where only the control map can carry it) and openmoji_share (the evaluators' style head).
Writes results.json, results.md and examples.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# rows of examples.png under the control maps (first 8 emoji)
PICTURED = ("ours, no ControlNet", "prior + ControlNet", "fine-tune + ControlNet",
            "ours + ControlNet, prior branches only", "ours + ControlNet, every branch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controlnet", default=None, help="ControlNet folder (default: the shipped emoji ControlNet)")
    parser.add_argument("--models", default="outputs/demo", help="folder with ours/ and finetune/")
    parser.add_argument("--out", default="outputs/emoji-controlnet")
    parser.add_argument("--num-emoji", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weight", type=float, default=2.5, help="w_d and w_c (the fine-tune's CFG scale)")
    parser.add_argument("--ours-domain-guidance-scale", "--ours-domain-scale", type=float, default=None,
                        help="ours' w_d when it should differ from --weight (for example the one `indomain tune` chose; "
                             "--ours-domain-scale: an alias kept from before)")
    parser.add_argument("--scale", type=float, default=1.0, help="controlnet_conditioning_scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from indomain.outputs import make_grid
    from indomain.pipeline import InDomainPipeline
    from indomain.schedulers import make_scheduler
    from indomain.world.benchmark import DOMAIN_CAPTION
    from indomain.world.controlnet import control_image, edge_f1
    from indomain.world.evaluators import load_evaluators
    from indomain.world.prior import emoji_prior_dir
    from indomain.world.render import evenly_spaced, list_emoji, render, shipped_weights, split_emoji

    models, out = Path(args.models), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = str(emoji_prior_dir())
    _, held_out = split_emoji(list_emoji(), seed=0)
    emoji = evenly_spaced(held_out, args.num_emoji)
    styles = ["noto" if i % 2 == 0 else "twemoji" for i in range(len(emoji))]
    controls = [control_image(render(e, s, 32)) for e, s in zip(emoji, styles)]
    names = [e.name for e in emoji]
    styled = [f"{DOMAIN_CAPTION}, {n}" for n in names]
    w = args.weight
    w_d = w if args.ours_domain_guidance_scale is None else args.ours_domain_guidance_scale

    cn = ControlNetModel.from_pretrained(args.controlnet or shipped_weights("emoji-controlnet"),
                                         torch_dtype=torch.float32)
    plain = InDomainPipeline.from_pretrained(prior, domain_unet=models / "ours")
    ours = InDomainPipeline.from_pretrained(prior, domain_unet=models / "ours", controlnet=cn)
    finetune = InDomainPipeline.from_pretrained(prior, unet=UNet2DConditionModel.from_pretrained(models / "finetune"),
                                                controlnet=cn)
    for p in (plain, ours, finetune):
        p.set_progress_bar_config(disable=True)
        p.scheduler = make_scheduler("dpm++", p.scheduler.config)
    cnkw = dict(image=controls, controlnet_conditioning_scale=args.scale)
    empty = [""] * len(names)
    methods = {  # name -> (pipeline, call arguments)
        "sanity: prior, empty prompt, no ControlNet": (plain, dict(prompt=empty, domain_guidance_scale=0, guidance_scale=w)),
        "sanity: prior, empty prompt + ControlNet": (ours, dict(prompt=empty, domain_guidance_scale=0, guidance_scale=w,
                                                                **cnkw)),
        "prior, no ControlNet": (plain, dict(prompt=names, domain_guidance_scale=0, guidance_scale=w)),
        "ours, no ControlNet": (plain, dict(prompt=names, domain_guidance_scale=w_d, guidance_scale=w)),
        "prior + ControlNet": (ours, dict(prompt=names, domain_guidance_scale=0, guidance_scale=w, **cnkw)),
        "fine-tune + ControlNet": (finetune, dict(prompt=styled, domain_guidance_scale=0, guidance_scale=w, **cnkw)),
        "ours + ControlNet, prior branches only": (ours, dict(prompt=names, domain_guidance_scale=w_d, guidance_scale=w,
                                                              controlnet_to_domain=False, **cnkw)),
        "ours + ControlNet, every branch": (ours, dict(prompt=names, domain_guidance_scale=w_d, guidance_scale=w,
                                                       controlnet_to_domain=True, **cnkw)),
    }
    scorer = load_evaluators().scorer(k=10, seed=args.seed)

    def score(images):
        s = scorer(images, names)
        return {"edge_f1": float(np.mean([edge_f1(c, im) for c, im in zip(controls, images)])),
                "control_top1": s["control_top1"], "openmoji_share": s["openmoji_share"]}

    openmoji = [render(e, "openmoji", 32) for e in emoji]
    rows = [{"method": "reference: OpenMoji render of the same emoji", **score(openmoji)},
            {"method": "reference: OpenMoji render of another emoji (edge F1 only)",
             **score(openmoji[1:] + openmoji[:1])}]
    grid = [c.resize((64, 64), 0) for c in controls[:8]]
    start = time.time()
    for name, (pipe, kw) in methods.items():
        with torch.no_grad():
            images = pipe(num_inference_steps=args.steps, height=32, width=32,
                          generator=[torch.Generator().manual_seed(args.seed + i) for i in range(len(names))], **kw).images
        rows.append({"method": name, **score(images)})
        print(rows[-1], flush=True)
        if name in PICTURED:
            grid += [im.resize((64, 64)) for im in images[:8]]
    seconds = time.time() - start

    lines = ["| method | edge F1 | control_top1 | openmoji_share |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['edge_f1']:.3f} | {r['control_top1']:.3f} | {r['openmoji_share']:.3f} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "n": len(names), "seconds": seconds,
                                                  "names": names, "styles": styles, "rows": rows}, indent=2))
    make_grid(grid, ncols=8).save(out / "examples.png")
    print("\n".join(lines))
    print(f"{seconds / 60:.1f} min; wrote {out}")


if __name__ == "__main__":
    main()
