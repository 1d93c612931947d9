"""Why the domain is lost under a prompt, and which guidance forms keep it (issue #24).

    python benchmarks/domain_control.py eval  --bench outputs/bench-openmoji --domain openmoji --out outputs/dc-openmoji
    python benchmarks/domain_control.py terms --bench outputs/bench-openmoji --domain openmoji --out outputs/dc-openmoji

``--bench`` is a folder with a trained null-text domain model in ``ours/`` (`indomain world benchmark`'s, or one
trained the same way: seed 0, 400 steps). Every setting is sampled exactly as the benchmark samples ours: its 96
held-out prompts (evenly spaced over the 276 held-out emoji), N images per seed (image i: prompt i mod 96, generator
seed s x 1,000,000 + i), DPM-Solver++ with 20 steps, batches of 16, the shipped emoji evaluators for ``--domain``.
Results are appended to ``<out>/eval.json`` one (setting, seed) at a time, so an interrupted run resumes.

``eval`` settings (``--settings``, names below): ``form:w_d:w_c`` with form one of
* ``uncond``: no prompt (Eq. B; control is still scored against the prompt the image would have had);
* ``decoupled``: the paper's Eq. A (the benchmark's ``ours``);
* ``domain-text``: the control term from the domain model with the prior's cross-attention put back
  (`indomain.guidance.domain_text`);
* ``dt-uncond``: ``domain-text`` without a prompt (the domain model with the prior's text pathway fed ∅).

``terms``: along real Eq. A trajectories at (2.5, 2.5) (32 held-out prompts, seed 0), at every step the norms of the
domain term d = eps_domain − eps_prior(∅), of the prior's control term p = eps_prior(c) − eps_prior(∅), of the
domain-side control term q = eps_dt(c) − eps_dt(∅), and the cosines cos(d, p), cos(d, q), cos(p, q): mean over images
of the per-image values. Also ``switch``: the prompt's term on the first k steps only (then domain only), k over the
trajectory, to find where identity is fixed and where the style is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load(bench: Path):
    import torch

    from indomain import InDomainPipeline
    from indomain.schedulers import make_scheduler
    from indomain.world.prior import emoji_prior_dir

    torch.set_num_threads(1)
    pipe = InDomainPipeline.from_pretrained(str(emoji_prior_dir()), domain_unet=bench / "ours")
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def held_out_prompts(num_prompts: int = 96) -> list[str]:
    from indomain.world.evaluators import DOMAIN_SPLIT_SEED
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    _, held_out = split_emoji(list_emoji(), seed=DOMAIN_SPLIT_SEED)
    return evenly_spaced([e.name for e in held_out], num_prompts)


def parse(setting: str) -> tuple[str, float, float, float, float]:
    """``form:w_d:w_c[:start:end]`` (start/end: the control window)."""
    parts = setting.split(":")
    form, w_d, w_c = parts[0], float(parts[1]), float(parts[2])
    start, end = (float(parts[3]), float(parts[4])) if len(parts) > 3 else (0.0, 1.0)
    return form, w_d, w_c, start, end


def sample(pipe, setting: str, names: list[str], seed: int, steps: int = 20, batch: int = 16):
    import torch

    from indomain.world.benchmark import SEED_STRIDE

    form, w_d, w_c, start, end = parse(setting)
    prompted = form not in ("uncond", "dt-uncond")
    pipe_form = "domain-text" if form in ("domain-text", "dt-uncond") else "decoupled"
    images = []
    for i in range(0, len(names), batch):
        gens = [torch.Generator("cpu").manual_seed(seed * SEED_STRIDE + j) for j in range(i, min(i + batch, len(names)))]
        images += pipe(names[i : i + batch] if prompted else None, num_images_per_prompt=1 if prompted else len(gens),
                       domain_guidance_scale=w_d, guidance_scale=w_c if prompted else 0.0, num_inference_steps=steps,
                       generator=gens, guidance_form=pipe_form, control_guidance_start=start,
                       control_guidance_end=end).images
    return images


def cmd_eval(args) -> None:
    from indomain.outputs import make_grid
    from indomain.world.evaluators import load_evaluators

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "eval.json"
    rows = json.loads(record.read_text()) if record.exists() else []
    done = {(r["setting"], r["seed"], r["n"]) for r in rows}
    pipe = load(Path(args.bench))
    scorer = load_evaluators().scorer(k=10, domain=args.domain)
    prompts = held_out_prompts()
    names = [prompts[i % len(prompts)] for i in range(args.n)]
    for setting in args.settings:
        for seed in args.seeds:
            if (setting, seed, args.n) in done:
                continue
            t0 = time.time()
            images = sample(pipe, setting, names, seed)
            scores = scorer(images, names)
            row = {"setting": setting, "seed": seed, "n": args.n, "domain": args.domain,
                   "seconds": round(time.time() - t0, 1), **{k: float(v) for k, v in scores.items()}}
            rows.append(row)
            record.write_text(json.dumps(rows, indent=1))
            if seed == args.seeds[0]:
                make_grid(images[:32], ncols=8).save(out / f"{setting.replace(':', '_')}.png")
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


def cmd_terms(args) -> None:
    import torch

    from indomain.nulltext import prior_text_pathway

    pipe = load(Path(args.bench))
    names = held_out_prompts(args.num_prompts)
    steps = 20
    prior, dom = pipe.unet, pipe.domain_unet
    cond = pipe.encode_text(names, "cpu")
    null = pipe.encode_text([""] * len(names), "cpu")
    stats: list[dict] = []

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean().item()

    def norm(a):
        return a.flatten(1).norm(dim=1).mean().item()

    def record(i, t, x):
        with torch.no_grad():
            both = prior(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample
            eps_u, eps_c = both.chunk(2)
            eps_d = dom(x, t).sample
            with prior_text_pathway(dom, prior) as unet:
                dt = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample
            dt_u, dt_c = dt.chunk(2)
        d, p, q = eps_d - eps_u, eps_c - eps_u, dt_c - dt_u
        stats.append({"step": i, "t": int(t), "|d|": norm(d), "|p|": norm(p), "|q|": norm(q),
                      "|dt(∅)-d_const|": norm(dt_u - eps_d), "cos(d,p)": cos(d, p), "cos(d,q)": cos(d, q),
                      "cos(p,q)": cos(p, q)})

    def callback(p, i, t, kw):
        return {}

    # run Eq. A (2.5, 2.5) and record the terms at the x_t the sampler visits
    gens = [torch.Generator("cpu").manual_seed(j) for j in range(len(names))]
    original = pipe.predict

    def predict(latents, t, c, i, n):
        record(i, t, pipe.scheduler.scale_model_input(latents, t))
        return original(latents, t, c, i, n)

    pipe.predict = predict
    pipe(names, domain_guidance_scale=2.5, guidance_scale=2.5, num_inference_steps=steps, generator=gens)
    pipe.predict = original
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "terms.json").write_text(json.dumps(stats, indent=1))
    keys = list(stats[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for s in stats:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in s.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["eval", "terms"])
    ap.add_argument("--bench", required=True)
    ap.add_argument("--domain", default="openmoji")
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", nargs="*", default=["decoupled:2.5:2.5", "uncond:2.5:0", "domain-text:2.5:2.5"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--num-prompts", type=int, default=32)
    args = ap.parse_args()
    {"eval": cmd_eval, "terms": cmd_terms}[args.command](args)


if __name__ == "__main__":
    main()
