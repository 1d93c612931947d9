"""The paper's Figure 2, measured in the emoji world: control and fidelity against training length.

    python experiments/training_length.py --demo outputs/demo --out outputs/training_length [--steps 300 1000 3000]

The paper's claim: a fine-tune's control falls as its fidelity rises with training, while ours (the null-text domain
model with decoupled guidance) keeps control at every length. Both models train on the demo's domain images (OpenMoji
renders of the seen emoji, its latent cache) with the demo's settings (batch 16, lr 1e-4, EMA 0.99), in stages that
resume exactly (`--resume latest`), so each length is the same run stopped earlier. Each length is scored on held-out
emoji (never in the domain data) prompted by name: ours at w_d = w_c = 2.5; the fine-tune with the prompt
"openmoji style, <name>" and CFG 2.5. Scores from the shipped evaluators, with the binomial standard error for shares
and the range over seeds for FD. Writes results.json, results.md and training_length.png into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="outputs/demo", help="a `make demo` output (domain_images/, latent_cache/)")
    ap.add_argument("--out", default="outputs/training_length")
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--num-emoji", type=int, default=96)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --out/results.json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((Path(args.out) / "results.json").read_text())["rows"], Path(args.out))
        return

    import torch
    from diffusers import UNet2DConditionModel

    from indomain import InDomainPipeline
    from indomain.train import TrainConfig, train
    from indomain.world.benchmark import DOMAIN_CAPTION
    from indomain.world.evaluators import load_evaluators
    from indomain.world.prior import emoji_prior_dir
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    demo, out = Path(args.demo), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = str(emoji_prior_dir())
    methods = {"ours": dict(), "fine-tune": dict(baseline=True, caption=DOMAIN_CAPTION)}
    train_seconds = {}
    for method, extra in methods.items():
        run = out / f"run-{method}"
        for steps in sorted(args.steps):
            keep = out / f"{method}-{steps}"
            if (keep / "config.json").is_file():
                continue
            start = time.time()
            train(TrainConfig(prior=prior, images=str(demo / "domain_images"), output=str(run), resolution=32,
                              train_batch_size=16, learning_rate=1e-4, max_train_steps=steps, checkpointing_steps=steps,
                              checkpoints_total_limit=1, latent_cache=str(demo / "latent_cache"), ema_decay=0.99,
                              resume="latest" if (run / "train_config.json").is_file() else None, **extra))
            train_seconds[f"{method}-{steps}"] = round(time.time() - start, 1)
            keep.mkdir()
            for name in ("config.json", "diffusion_pytorch_model.safetensors"):
                shutil.copy2(run / name, keep / name)

    _, held_out = split_emoji(list_emoji(), seed=0)
    names = [e.name for e in evenly_spaced(held_out, args.num_emoji)]
    scorer = load_evaluators().scorer(k=10)
    rows = []
    for method in methods:
        for steps in sorted(args.steps):
            model = out / f"{method}-{steps}"
            if method == "ours":
                pipe = InDomainPipeline.from_pretrained(prior, domain_unet=model)
                prompts, kw = names, dict(domain_guidance_scale=2.5, guidance_scale=2.5)
            else:
                pipe = InDomainPipeline.from_pretrained(prior, unet=UNet2DConditionModel.from_pretrained(model))
                prompts, kw = [f"{DOMAIN_CAPTION}, {n}" for n in names], dict(domain_guidance_scale=0.0, guidance_scale=2.5)
            pipe.set_progress_bar_config(disable=True)
            per_seed = []
            for seed in args.seeds:
                images = []
                for i in range(0, len(prompts), 32):
                    gens = [torch.Generator().manual_seed(seed * 10_000 + i + j) for j in range(len(prompts[i:i + 32]))]
                    images += pipe(prompts[i:i + 32], num_inference_steps=args.sample_steps, generator=gens, **kw).images
                per_seed.append(scorer(images, names))
                if seed == args.seeds[0]:
                    from indomain.outputs import make_grid

                    make_grid([im.resize((64, 64)) for im in images[:16]], ncols=16).save(out / f"{method}-{steps}.png")
            n = len(names) * len(args.seeds)
            row = {"method": method, "steps": steps, "n": n}
            for key in per_seed[0]:
                values = [s[key] for s in per_seed]
                row[key] = sum(values) / len(values)
                if key in ("control_top1", "openmoji_share"):
                    row[key + "_se"] = math.sqrt(row[key] * (1 - row[key]) / n)
                else:
                    row[key + "_range"] = [min(values), max(values)]
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "train_seconds": train_seconds, "rows": rows},
                                                 indent=2))
    lines = ["| method | steps | control_top1 | fd_openmoji (seed range) | openmoji_share | precision | recall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['control_top1']:.3f} ± {r['control_top1_se']:.3f} | "
                     f"{r['fd_openmoji']:.2f} ({r['fd_openmoji_range'][0]:.2f}–{r['fd_openmoji_range'][1]:.2f}) | "
                     f"{r['openmoji_share']:.3f} ± {r['openmoji_share_se']:.3f} | {r['precision_openmoji']:.3f} | "
                     f"{r['recall_openmoji']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    plot(rows, out)


def plot(rows: list[dict], out: Path) -> None:
    """Control and FD against training steps, one line per method (training_length.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        x = [r["steps"] for r in pts]
        axes[0].errorbar(x, [r["control_top1"] for r in pts], yerr=[r["control_top1_se"] for r in pts], marker="o",
                         capsize=3, label=method)
        axes[1].errorbar(x, [r["fd_openmoji"] for r in pts], marker="o", capsize=3, label=method,
                         yerr=[[r["fd_openmoji"] - r["fd_openmoji_range"][0] for r in pts],
                               [r["fd_openmoji_range"][1] - r["fd_openmoji"] for r in pts]])
    steps = sorted({r["steps"] for r in rows})
    axes[0].set(xscale="log", xlabel="training steps", ylabel="control_top1 (held-out, higher is better)")
    axes[1].set(xscale="log", xlabel="training steps", ylabel="FD to OpenMoji (lower is better)")
    for ax in axes:
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.legend(fontsize=8)
    fig.suptitle(f"Training length, held-out emoji, N = {rows[0]['n']} per point (bars: SE / seed range)")
    fig.tight_layout()
    fig.savefig(out / "training_length.png", dpi=120)


if __name__ == "__main__":
    main()
