"""Where a distilled student's sampling time goes, against diffusers' CFG: the UNet call itself, and the rest.

    python benchmarks/student_overhead.py --preset cpu-small --batch 1 4 --repeats 7
    python benchmarks/student_overhead.py --preset cpu-small --batch 1 --profile   # + cProfile of the non-UNet part
    python benchmarks/student_overhead.py --preset sd15 --batch 1 4 --repeats 3 --floor-only   # 512 px: the floor alone

Two measurements, each alternating its paths in one process (medians):

- **the floor**: one bare UNet call at B rows (the student's, with its weight embedding) against one at 2B rows
  (CFG's batched call), same inputs. No sampler can beat this ratio with that UNet: it is what is left once every
  per-step cost outside the UNet is gone.
- **the whole call**, ``output_type="latent"`` (no VAE decode), 25 DPM-Solver++ steps: diffusers'
  `StableDiffusionPipeline` against the student's `InDomainPipeline`, and the time of each outside its UNet calls
  (measured by a forward hook on the UNet).

``--floor-only`` skips the whole calls (at 512 px on a CPU they take minutes). ``--profile`` prints, for one call of each, cProfile's top functions by cumulative time, without those inside the UNet.
Random weights, the presets of `sampling.py`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

from sampling import build, paths


def timed_unet(pipe) -> list[float]:
    """Record the wall time of each call of ``pipe.unet`` (pre- and post-forward hooks) into the returned list."""
    spent, start = [], []
    pipe.unet.register_forward_pre_hook(lambda m, a: start.append(time.perf_counter()))
    pipe.unet.register_forward_hook(lambda m, a, o: spent.append(time.perf_counter() - start.pop()))
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small", choices=["cpu-small", "sd15-cpu", "sd15"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--floor-only", action="store_true", help="time only the bare UNet calls, not the whole calls")
    args = ap.parse_args()
    parts = build(args.preset, torch.float32)
    run = paths(args.preset, parts, "cpu", args.steps, "latent", {"diffusers", "ours, distilled student (one call)"})
    pipes = {"diffusers": run["diffusers"], "student": run["ours, distilled student (one call)"]}
    unet_time = {name: timed_unet(fn.pipe) for name, fn in pipes.items()}
    from indomain.student import weight_rows

    cfg_unet, student_unet = parts["unet"], pipes["student"].pipe.unet
    rows = []
    for batch in args.batch:
        torch.manual_seed(0)
        x = torch.randn(batch, 4, cfg_unet.config.sample_size, cfg_unet.config.sample_size)
        text = torch.randn(batch, 77, cfg_unet.config.cross_attention_dim)
        t, w = torch.tensor(500), weight_rows(2.5, 2.5, batch, x)
        x2, text2 = torch.cat([x, x]), torch.cat([text, text])  # CFG's batch: ∅ and the prompt
        bare = {"CFG's UNet call (2B rows)": lambda: cfg_unet(x2, t, encoder_hidden_states=text2),
                "the student's UNet call (B rows)": lambda: student_unet(x, t, encoder_hidden_states=text, class_labels=w)}
        prompts, seeds = ["a photo of a cat"] * batch, list(range(batch))
        if args.floor_only:
            pipes = {}
        times = {k: [] for k in [*bare, *pipes]}
        outside = {k: [] for k in pipes}
        with torch.no_grad():
            for f in bare.values():
                f()
            for f in pipes.values():
                f(prompts, seeds)
            for _ in range(args.repeats):
                for name, f in bare.items():
                    start = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - start)
                for name, f in pipes.items():
                    unet_time[name].clear()
                    start = time.perf_counter()
                    f(prompts, seeds)
                    times[name].append(time.perf_counter() - start)
                    outside[name].append(times[name][-1] - sum(unet_time[name]))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((batch, "the floor: one UNet call, B rows (student) / 2B rows (CFG)", med["the student's UNet call (B rows)"],
                     med["CFG's UNet call (2B rows)"]))
        if pipes:
            rows.append((batch, f"whole call, {args.steps} steps, latents: student / diffusers", med["student"],
                         med["diffusers"]))
            rows.append((batch, "outside the UNet calls: student / diffusers", statistics.median(outside["student"]),
                         statistics.median(outside["diffusers"])))
        if args.profile:
            for name, f in pipes.items():
                prof = cProfile.Profile()
                prof.enable()
                f(prompts, seeds)
                prof.disable()
                out = io.StringIO()
                stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
                # indomain's and the pipelines' own functions, the scheduler, the text encoder: not the UNet's insides
                stats.print_stats(r"indomain/|pipeline_stable_diffusion\.py|scheduling_|modeling_clip\.py:\d+\(forward|"
                                  r"unet_2d_condition\.py:\d+\(forward", 20)
                print(f"==== {name}, batch {batch}, one call\n{out.getvalue()}")
    print(f"\n{args.preset} · 1 call = {args.steps} steps · median of {args.repeats}\n")
    print("| batch | what | student s | diffusers s | ratio |")
    print("|---|---|---|---|---|")
    for batch, what, a, b in rows:
        print(f"| {batch} | {what} | {a:.4f} | {b:.4f} | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
