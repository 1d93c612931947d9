"""Weight schedules that constant (w_d, w_c) cannot express, against the emoji benchmark's curve.

    python experiments/schedules_emoji.py --bench outputs/benchmark --out outputs/schedules

Each schedule is sampled exactly as `indomain world benchmark` samples a setting of ours: its trained `ours` model, its
96 held-out prompts, N = 96 images per seed with seeds 0 and 1 (image i of seed s: generator seed s x 1,000,000 + i),
DPM-Solver++ with 20 steps, batches of 16, the same evaluators. Its rows are then set beside the benchmark's own rows
(results.json) and the Pareto front of control_top1 (higher) vs fd_openmoji (lower) is recomputed over all of them. A
schedule is worth keeping only if it lands on that front.

* a **window**: the domain term on part of the trajectory only (the combiner's interval, `domain_guidance_start/end`);
* a **ramp**: w_d moving linearly over the steps with w_c rising as w_d rises (a step-end callback sets
  ``pipe._domain_guidance_scale`` / ``pipe._guidance_scale`` for the next step, as diffusers' callbacks do).

The first schedule is the constant (2.5, 2.5): it must reproduce the benchmark's row (a check of the harness).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name -> (w_d at the first and last step, w_c at the first and last step, domain window)
SCHEDULES = {
    "constant 2.5 / 2.5 (the benchmark's row)": ((2.5, 2.5), (2.5, 2.5), (0.0, 1.0)),
    "domain on the first 60%, w_d 4": ((4.0, 4.0), (2.5, 2.5), (0.0, 0.6)),
    "domain on the last 70%, w_d 4": ((4.0, 4.0), (2.5, 2.5), (0.3, 1.0)),
    "ramp up: w_d 0→5, w_c 1.5→5": ((0.0, 5.0), (1.5, 5.0), (0.0, 1.0)),
    "ramp down: w_d 5→0, w_c 5→1.5": ((5.0, 0.0), (5.0, 1.5), (0.0, 1.0)),
    "w_d 4, w_c ramp 1.5→5": ((4.0, 4.0), (1.5, 5.0), (0.0, 1.0)),
    # constant points between the benchmark's grid points, next to the schedules that landed on its front
    "constant 2.5 / 2": ((2.5, 2.5), (2.0, 2.0), (0.0, 1.0)),
    "constant 2.5 / 4": ((2.5, 2.5), (4.0, 4.0), (0.0, 1.0)),
    # beyond the grid's largest w_d, for a prior whose curve the grid no longer spans (issue #14 §6)
    "constant 5.5 / 1.5": ((5.5, 5.5), (1.5, 1.5), (0.0, 1.0)),
    "constant 5.5 / 2.5": ((5.5, 5.5), (2.5, 2.5), (0.0, 1.0)),
    "constant 7 / 2.5": ((7.0, 7.0), (2.5, 2.5), (0.0, 1.0)),
}


def weights_at(schedule: tuple, step: int, num_steps: int) -> tuple[float, float]:
    """(w_d, w_c) of ``schedule`` at ``step``: linear from the first to the last step."""
    (d0, d1), (c0, c1), _ = schedule
    s = step / max(num_steps - 1, 1)
    return d0 + (d1 - d0) * s, c0 + (c1 - c0) * s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="outputs/benchmark", help="a finished `indomain world benchmark` folder")
    ap.add_argument("--out", default="outputs/schedules")
    ap.add_argument("--only", nargs="*", default=None, help="run only these schedules (by name)")
    ap.add_argument("--n", type=int, default=None, help="images per seed (default: the benchmark's; fewer: a smoke run)")
    args = ap.parse_args()

    import torch

    from indomain import InDomainPipeline
    from indomain.outputs import make_grid
    from indomain.schedulers import make_scheduler
    from indomain.world.benchmark import (
        REAL, ROUND_TRIP, SEED_STRIDE, aggregate_seeds, pareto_front, plot_tradeoff)
    from indomain.world.evaluators import load_evaluators
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    bench = Path(args.bench)
    record = json.loads((bench / "results.json").read_text())
    config = record["config"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, held_out = split_emoji(list_emoji(), seed=config["seed"])
    prompts = evenly_spaced([e.name for e in held_out], config["num_prompts"])
    n, steps = args.n or config["images_per_setting"], config["sample_steps"]
    names = [prompts[i % len(prompts)] for i in range(n)]
    pipe = InDomainPipeline.from_pretrained(config["prior"], domain_unet=bench / "ours")
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    scorer = load_evaluators().scorer(k=10)

    rows = []
    for name, schedule in SCHEDULES.items():
        if args.only and name not in args.only:
            continue
        (d0, d1), (c0, c1), (start, end) = schedule
        ramp = d0 != d1 or c0 != c1

        def next_weights(p, i, t, kwargs, schedule=schedule):
            p._domain_guidance_scale, p._guidance_scale = weights_at(schedule, i + 1, steps)
            return {}

        per_seed = []
        for seed in config["seeds"]:
            images = []
            for i in range(0, n, 16):
                gens = [torch.Generator("cpu").manual_seed(seed * SEED_STRIDE + j) for j in range(i, min(i + 16, n))]
                images += pipe(names[i : i + 16], domain_guidance_scale=d0, guidance_scale=c0, num_inference_steps=steps,
                               generator=gens, domain_guidance_start=start, domain_guidance_end=end,
                               callback_on_step_end=next_weights if ramp else None).images
            scores = scorer(images, names)
            per_seed.append([{"method": name, "w_d": max(d0, d1), "w_c": max(c0, c1), "n_generated": n, **scores}])
            if seed == config["seeds"][0]:
                make_grid(images[:32], ncols=8).save(out / f"{len(rows):02d}.png")
            print(name, "seed", seed, {k: round(v, 3) for k, v in scores.items()}, flush=True)
        rows += aggregate_seeds(per_seed)

    bench_rows = record["splits"]["held-out"]["rows"]
    everything = bench_rows + rows
    settings = [i for i, r in enumerate(everything) if r["method"] not in (REAL, ROUND_TRIP)]
    front = [settings[j] for j in pareto_front([(everything[i]["control_top1"], everything[i]["fd_openmoji"])
                                                for i in settings])]
    plot_tradeoff(everything, front, out / "schedules-held-out.png", "held-out prompts, with weight schedules")
    lines = ["| schedule | control_top1 | fd_openmoji (seed range) | openmoji_share | recall | on the front |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(everything):
        if r["method"] in SCHEDULES or i in front:
            label = r["method"] if r["method"] in SCHEDULES else f"{r['method']} ({r['w_d']:g}, {r['w_c']:g})"
            lines.append(f"| {label} | {r['control_top1']:.3f} ± {r['control_top1_se']:.3f} | {r['fd_openmoji']:.2f} "
                         f"({r['fd_openmoji_min']:.2f}–{r['fd_openmoji_max']:.2f}) | {r['openmoji_share']:.3f} | "
                         f"{r['recall_openmoji']:.3f} | {'●' if i in front else ''} |")
    table = "\n".join(lines)
    (out / "schedules.md").write_text(table + "\n")
    (out / "schedules.json").write_text(json.dumps({"rows": rows, "front": [everything[i] for i in front]}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
