"""The quality cost of the opt-in sampling approximations, in the emoji world.

    python experiments/approximations_emoji.py --models outputs/demo --out outputs/approximations

For held-out emoji prompted by name (the domain model never saw them), ours at w_d = w_c = 2.5 is run exactly and with
each approximation; every setting draws the same images (seed i for prompt i, several seeds). Scores: the shipped
emoji evaluators (`control_top1`: is it the prompted emoji, top-1 of 10; `fd_openmoji`: Fréchet distance to OpenMoji
renders; `openmoji_share`; k-NN `precision/recall_openmoji`), the domain-model calls per image and the wall time.
Reported with each score's spread: binomial standard error for shares, min–max over seeds for FD.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {  # name -> extra call arguments of ours
    "exact": {},
    "domain every 2": {"domain_guidance_every": 2},
    "domain every 3": {"domain_guidance_every": 3},
    "domain interval 0-0.5": {"domain_guidance_end": 0.5},
    "domain interval 0.5-1": {"domain_guidance_start": 0.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="outputs/demo", help="folder with the trained ours/ (default: %(default)s)")
    ap.add_argument("--out", default="outputs/approximations")
    ap.add_argument("--num-emoji", type=int, default=96)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()

    import torch

    from indomain import InDomainPipeline
    from indomain.world.evaluators import load_evaluators
    from indomain.world.prior import emoji_prior_dir
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, held_out = split_emoji(list_emoji(), seed=0)
    names = [e.name for e in evenly_spaced(held_out, args.num_emoji)]
    pipe = InDomainPipeline.from_pretrained(str(emoji_prior_dir()), domain_unet=Path(args.models) / "ours")
    pipe.set_progress_bar_config(disable=True)
    calls = {"n": 0}
    forward = pipe.domain_unet.forward

    def counted(*a, **k):
        calls["n"] += a[0].shape[0] if a else k["sample"].shape[0]
        return forward(*a, **k)

    pipe.domain_unet.forward = counted
    ev = load_evaluators()
    scorer = ev.scorer(k=10)
    rows = []
    for name, extra in SETTINGS.items():
        per_seed, seconds, n_calls = [], 0.0, 0
        for seed in args.seeds:
            calls["n"] = 0
            start = time.perf_counter()
            images = []
            for i in range(0, len(names), 32):
                batch = names[i:i + 32]
                gens = [torch.Generator().manual_seed(seed * 10_000 + i + j) for j in range(len(batch))]
                images += pipe(batch, domain_guidance_scale=2.5, guidance_scale=2.5, num_inference_steps=args.steps,
                               generator=gens, **extra).images
            seconds += time.perf_counter() - start
            n_calls += calls["n"]
            per_seed.append(scorer(images, names))
            if seed == args.seeds[0]:
                from indomain.outputs import make_grid

                make_grid([im.resize((64, 64)) for im in images[:16]], ncols=16).save(out / f"{name.replace(' ', '_')}.png")
        n = len(names) * len(args.seeds)
        row = {"setting": name, "n": n, "seeds": args.seeds, "domain_calls_per_image": n_calls / n,
               "seconds_per_image": seconds / n}
        for key in per_seed[0]:
            values = [s[key] for s in per_seed]
            row[key] = sum(values) / len(values)
            if key in ("control_top1", "openmoji_share"):  # shares: binomial standard error over all n images
                row[key + "_se"] = math.sqrt(row[key] * (1 - row[key]) / n)
            else:
                row[key + "_range"] = [min(values), max(values)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = ["| setting | domain calls / image | s / image | control_top1 | fd_openmoji (seed range) | openmoji_share | "
             "precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['domain_calls_per_image']:.1f} | {r['seconds_per_image']:.3f} | "
            f"{r['control_top1']:.3f} ± {r['control_top1_se']:.3f} | {r['fd_openmoji']:.2f} "
            f"({r['fd_openmoji_range'][0]:.2f}–{r['fd_openmoji_range'][1]:.2f}) | "
            f"{r['openmoji_share']:.3f} ± {r['openmoji_share_se']:.3f} | {r['precision_openmoji']:.3f} | "
            f"{r['recall_openmoji']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
