"""Is a longer-trained emoji prior measurably better?

    python experiments/prior_quality.py --out outputs/prior-quality \
        --unets shipped runs/emoji-prior-continued/snapshots/unet-*

Each UNet (``shipped``, or an EMA UNet folder named ``unet-<step>``, such as the snapshots of
`indomain world train-prior --init-from ...`) is put into the shipped pipeline in place of the shipped UNet and
measured with ``measure_prior``: one image per name for 200 names spread over the world, DDIM 20 steps, CFG 5, at
each seed. The ceiling row is the same names' real renders (Noto and Twemoji alternately) through the prior's VAE,
scored the same way: a prior cannot beat it, and FD at a fixed N has a floor above 0. Results are cached per UNet and
seed in results.json, so a rerun only measures new snapshots. Writes results.json, results.md, prior_quality.png
(each score against training steps) and prior_samples.png (the same prompts and seeds for each UNet, and the real
renders).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("control_top1", "fd_prior_styles", "fd_prior_styles_matched", "precision_prior_styles", "recall_prior_styles",
           "twemoji_share")
SHIPPED_STEPS = 16250  # the shipped UNet is the continued run's 16,250-step snapshot (6,000 before)
SAMPLE_NAMES = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/prior-quality")
    ap.add_argument("--unets", nargs="+", default=["shipped"], help="'shipped' or folders named unet-<step>")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1000])
    ap.add_argument("--num-prompts", type=int, default=200)
    args = ap.parse_args()

    from indomain.world.prior import measure_prior, real_prior_world, score_prior_world

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {"rows": {}}
    results.update(num_prompts=args.num_prompts, seeds=args.seeds, guidance_scale=5.0, sample_steps=20,
                   command="python experiments/prior_quality.py --out {} --unets {}".format(args.out, " ".join(args.unets)))
    rows = results["rows"]
    pipelines = {}
    for unet in args.unets:
        steps = SHIPPED_STEPS if unet == "shipped" else unet_steps(unet)
        pipelines[steps] = pipeline_with_unet(unet, out / "pipelines" / str(steps))
        for seed in args.seeds:
            key = f"{steps}/{seed}"
            if key not in rows:
                print(f"measuring the prior at {steps} steps, seed {seed}", flush=True)
                rows[key] = {**measure_prior(pipelines[steps], num_prompts=args.num_prompts, seed=seed),
                             "unet_steps": steps, "seed": seed, "unet": unet}
                cache.write_text(json.dumps(results, indent=2))
    if "ceiling" not in results:
        images, names = real_prior_world(args.num_prompts)
        results["ceiling"] = score_prior_world(images, names, seed=args.seeds[0])
        cache.write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results))
    plot(results, out)
    samples(pipelines, out)
    print(table(results))


def unet_steps(path: str) -> int:
    match = re.fullmatch(r"unet-(\d+)", Path(path).name)
    if match is None:
        raise SystemExit(f"cannot tell the training step of {path}: name the folder unet-<step>")
    return int(match.group(1))


def pipeline_with_unet(unet: str, target: Path) -> Path:
    """The shipped prior's pipeline folder with ``unet`` in place of its UNet (links, not copies)."""
    from indomain.world.prior import emoji_prior_dir

    shipped = emoji_prior_dir()
    if unet == "shipped":
        return shipped
    target.mkdir(parents=True, exist_ok=True)
    for part in shipped.iterdir():
        link = target / part.name
        source = Path(unet).resolve() if part.name == "unet" else part
        if link.is_symlink() and link.resolve() != source.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(source)
    return target


def summarise(results: dict) -> list[dict]:
    """One row per training length: each metric's mean over seeds and its per-seed values."""
    by_steps: dict[int, list[dict]] = {}
    for row in results["rows"].values():
        by_steps.setdefault(row["unet_steps"], []).append(row)
    out = []
    for steps in sorted(by_steps):
        runs = sorted(by_steps[steps], key=lambda r: r["seed"])
        out.append({"unet_steps": steps, **{m: sum(r[m] for r in runs) / len(runs) for m in METRICS},
                    **{f"{m}_per_seed": [r[m] for r in runs] for m in METRICS}})
    return out


def table(results: dict) -> str:
    lines = [f"N = {results['num_prompts']} names per seed, seeds {results['seeds']}, DDIM 20 steps, CFG 5; "
             "per-seed values in brackets.", "",
             "| UNet steps | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for row in summarise(results):
        cells = [f"{row[m]:.3f} ({', '.join(f'{v:.3f}' for v in row[m + '_per_seed'])})" for m in METRICS]
        lines.append(f"| {row['unet_steps']:,} | " + " | ".join(cells) + " |")
    ceiling = results.get("ceiling")
    if ceiling:
        lines.append("| real renders through the VAE (ceiling) | " + " | ".join(f"{ceiling[m]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines) + f"\n\nCommand: `{results['command']}`\n"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarise(results)
    labels = {"control_top1": "control_top1 (higher is better)", "fd_prior_styles": "FD to Noto+Twemoji (lower)",
              "fd_prior_styles_matched": "FD, at its own style mix (lower)",
              "precision_prior_styles": "precision (higher)", "recall_prior_styles": "recall (higher)",
              "twemoji_share": "share judged Twemoji (0.5: even)"}
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.4))
    axes = axes.ravel()
    x = [r["unet_steps"] for r in rows]
    for ax, metric in zip(axes, METRICS):
        ax.plot(x, [r[metric] for r in rows], marker="o", color="C0", label="prior (mean of seeds)")
        for r in rows:
            ax.scatter([r["unet_steps"]] * len(r[metric + "_per_seed"]), r[metric + "_per_seed"], s=8, color="C0", alpha=0.4)
        if results.get("ceiling"):
            ax.axhline(results["ceiling"][metric], ls="--", color="k", lw=1, label="real renders via the VAE")
        ax.set(xlabel="UNet training steps", title=labels[metric])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"The emoji prior against training length (N = {results['num_prompts']} per seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "prior_quality.png", dpi=120)
    plt.close(fig)


def samples(pipelines: dict[int, Path], out: Path) -> None:
    """One row per UNet, the same 16 names and seeds; the last row is the real renders through the VAE."""
    import torch

    from indomain import InDomainPipeline
    from indomain.outputs import make_grid
    from indomain.world.prior import real_prior_world

    real, names = real_prior_world(SAMPLE_NAMES)
    grid = []
    for steps in sorted(pipelines):
        pipe = InDomainPipeline.from_pretrained(pipelines[steps])
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(k) for k in range(len(names))]
        grid += pipe(names, domain_guidance_scale=0, guidance_scale=5.0, num_inference_steps=20, generator=gens).images
    grid += real
    make_grid([im.resize((64, 64), 0) for im in grid], ncols=len(names)).save(out / "prior_samples.png")
    (out / "prior_samples.json").write_text(json.dumps({"rows": [*map(str, sorted(pipelines)), "real"],
                                                        "names": names}, indent=2))


if __name__ == "__main__":
    main()
