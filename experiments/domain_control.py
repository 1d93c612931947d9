"""Why the domain is lost under a prompt, and which guidance forms keep it.

    python experiments/domain_control.py eval  --bench outputs/bench-openmoji --domain openmoji --out outputs/dc-openmoji
    python experiments/domain_control.py terms --bench outputs/bench-openmoji --domain openmoji --out outputs/dc-openmoji

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
* ``dt-uncond``: ``domain-text`` without a prompt (the domain model with the prior's text pathway fed ∅);
* ``domain-text-bands:w_d:w_c:w_l``: ``domain-text`` with the prompt's term split in two bands, the low band at w_l
  (`indomain.guidance.domain_text_bands`, the default band edge).

``terms``: along real Eq. A trajectories at (2.5, 2.5) (32 held-out prompts, seed 0), at every step the norms of the
domain term d = eps_domain − eps_prior(∅), of the prior's control term p = eps_prior(c) − eps_prior(∅), of the
domain-side control term q = eps_dt(c) − eps_dt(∅), and the cosines cos(d, p), cos(d, q), cos(p, q): mean over images
of the per-image values. Also ``switch``: the prompt's term on the first k steps only (then domain only), k over the
trajectory, to find where identity is fixed and where the style is lost.

``report``: the tables (shares pooled over seeds with their binomial SE, FD mean and seed range) and one control-vs-FD
plot per domain, with the baselines' rows of the full benchmark (docs/RESULTS.md, :data:`BASELINES`) beside.
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


def parse(setting: str) -> tuple[str, float, float, float, float, float | None]:
    """``form:w_d:w_c[:start:end]`` (start/end: the control window), or ``domain-text-bands:w_d:w_c:w_l``."""
    parts = setting.split(":")
    form, w_d, w_c = parts[0], float(parts[1]), float(parts[2])
    if form == "domain-text-bands":
        return form, w_d, w_c, 0.0, 1.0, float(parts[3])
    start, end = (float(parts[3]), float(parts[4])) if len(parts) > 3 else (0.0, 1.0)
    return form, w_d, w_c, start, end, None


def sample(pipe, setting: str, names: list[str], seed: int, steps: int = 20, batch: int = 16):
    import torch

    from indomain.world.benchmark import SEED_STRIDE

    form, w_d, w_c, start, end, w_l = parse(setting)
    prompted = form not in ("uncond", "dt-uncond")
    pipe_form = {"dt-uncond": "domain-text", "uncond": "decoupled"}.get(form, form)
    bands = {} if w_l is None else {"layout_guidance_scale": w_l}
    images = []
    for i in range(0, len(names), batch):
        gens = [torch.Generator("cpu").manual_seed(seed * SEED_STRIDE + j) for j in range(i, min(i + batch, len(names)))]
        images += pipe(names[i : i + batch] if prompted else None, num_images_per_prompt=1 if prompted else len(gens),
                       domain_guidance_scale=w_d, guidance_scale=w_c if prompted else 0.0, num_inference_steps=steps,
                       generator=gens, guidance_form=pipe_form, control_guidance_start=start,
                       control_guidance_end=end, **bands).images
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
                      "|p-q|": norm(p - q), "|dt(∅)-d|": norm(dt_u - eps_d), "cos(d,p)": cos(d, p),
                      "cos(d,q)": cos(d, q), "cos(p,q)": cos(p, q), "cos(d,p-q)": cos(d, p - q)})

    def callback(p, i, t, kw):
        return {}

    # run Eq. A (2.5, 2.5) and record the terms at the x_t the sampler visits; then, for Eq. A and for domain-text at
    # (4, 2.5), the clean image each step predicts (x0 from the combined prediction), decoded and scored
    from indomain.world.evaluators import load_evaluators

    scorer = load_evaluators().scorer(k=10, domain=args.domain)
    original = pipe.predict
    alphas = pipe.scheduler.alphas_cumprod
    x0_scores: dict[str, list[dict]] = {}
    for label, w_d, w_c, form in (("decoupled 2.5/2.5", 2.5, 2.5, "decoupled"), ("domain-text 4/2.5", 4.0, 2.5,
                                                                                  "domain-text")):
        x0s = []

        def predict(latents, t, c, i, n, form=form, x0s=x0s):
            if form == "decoupled":
                record(i, t, pipe.scheduler.scale_model_input(latents, t))
            eps = original(latents, t, c, i, n)
            a = alphas[int(t)]
            x0s.append((latents - (1 - a).sqrt() * eps) / a.sqrt())
            return eps

        pipe.predict = predict
        gens = [torch.Generator("cpu").manual_seed(j) for j in range(len(names))]
        pipe(names, domain_guidance_scale=w_d, guidance_scale=w_c, num_inference_steps=steps, generator=gens,
             guidance_form=form)
        pipe.predict = original
        rows = []
        for i, x0 in enumerate(x0s):
            with torch.no_grad():
                images = pipe.latents_to_images(x0, "pil")
            scores = scorer(images, names)
            rows.append({"step": i, **{k: round(float(v), 3) for k, v in scores.items()}})
        x0_scores[label] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "terms.json").write_text(json.dumps({"terms": stats, "x0": x0_scores}, indent=1))
    keys = list(stats[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for s in stats:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in s.values()) + " |")
    fd = f"fd_{args.domain}"
    print(f"\n| step | " + " | ".join(f"{label}: control / {fd}" for label in x0_scores) + " |")
    print("|---|" + "---|" * len(x0_scores))
    for i in range(steps):
        print(f"| {i} | " + " | ".join(f"{x0_scores[k][i]['control_top1']:.2f} / {x0_scores[k][i][fd]:.1f}"
                                       for k in x0_scores) + " |")


# The baselines' rows of the full benchmark (docs/RESULTS.md, held-out prompts, N = 96 x 2 seeds, prior v2, models
# trained as here): (label, control_top1, fd mean, fd min, fd max). Ours' own rows are re-measured by `eval`.
BASELINES = {
    "openmoji": [("fine-tune + CFG 1.5 (best FD)", 0.385, 14.59, 14.27, 14.91),
                 ("fine-tune + CFG 7.5 (most control)", 0.589, 15.77, 15.63, 15.91),
                 ("LoRA fine-tune + CFG 2.5", 0.490, 16.08, 15.63, 16.52),
                 ("rectified 2.5 (best FD)", 0.443, 12.08, 11.14, 13.01),
                 ("prior (w_c 2.5)", 1.000, 25.52, 25.12, 25.91)],
    "sepia": [("fine-tune + CFG 1.5 (best FD)", 0.375, 6.53, 6.34, 6.72),
              ("fine-tune + CFG 7.5 (most control)", 0.609, 6.84, 6.75, 6.93),
              ("LoRA fine-tune + CFG 1.5", 0.432, 6.78, 6.45, 7.10),
              ("rectified 1.5 (best FD)", 0.318, 7.32, 7.13, 7.51),
              ("prior (w_c 2.5)", 1.000, 12.28, 12.21, 12.34)],
    "sticker": [("fine-tune + CFG 1.5 (best FD)", 0.323, 5.18, 4.98, 5.39),
                ("fine-tune + CFG 7.5 (most control)", 0.458, 5.96, 5.70, 6.21),
                ("LoRA fine-tune + CFG 2.5", 0.432, 6.40, 6.11, 6.68),
                ("rectified 1.5 (best FD)", 0.266, 5.78, 5.72, 5.84),
                ("prior (w_c 2.5)", 1.000, 18.45, 17.87, 19.03)],
}


def aggregate(rows: list[dict], domain: str) -> list[dict]:
    """One row per setting: shares pooled over seeds (binomial SE), FD mean (min-max over seeds)."""
    import math

    fd = f"fd_{domain}"
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["setting"], []).append(r)
    out = []
    for setting, rs in groups.items():
        n = sum(r["n"] for r in rs)
        agg = {"setting": setting, "seeds": len(rs), "n": n}
        for col in ("control_top1", "control_domain_top1", "openmoji_share"):
            if col in rs[0]:
                p = sum(r[col] for r in rs) / len(rs)
                agg[col], agg[f"{col}_se"] = p, math.sqrt(p * (1 - p) / n)
        for col in (fd, f"recall_{domain}", f"precision_{domain}"):
            v = [r[col] for r in rs]
            agg[col], agg[f"{col}_min"], agg[f"{col}_max"] = sum(v) / len(v), min(v), max(v)
        out.append(agg)
    return out


def cmd_report(args) -> None:
    """Tables (markdown) and one control-vs-FD plot per domain from the `eval` records."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    domains = args.domains
    fig = Figure(figsize=(5.2 * len(domains), 4.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(domains), squeeze=False)[0]
    for ax, domain in zip(axes, domains):
        path = Path(f"{args.root}/dc-{domain}/eval.json")
        rows = aggregate(json.loads(path.read_text()), domain)
        fd = f"fd_{domain}"
        print(f"\n### {domain} (from {path})\n")
        cols = ["control_top1", "control_domain_top1", "openmoji_share", fd, f"recall_{domain}"]
        cols = [c for c in cols if c in rows[0]]
        print("| setting | seeds × N | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for r in rows:
            cells = []
            for c in cols:
                if f"{c}_se" in r:
                    cells.append(f"{r[c]:.3f} ± {r[f'{c}_se']:.3f}")
                elif r["seeds"] > 1:
                    cells.append(f"{r[c]:.2f} ({r[f'{c}_min']:.2f}–{r[f'{c}_max']:.2f})")
                else:
                    cells.append(f"{r[c]:.2f}")
            print(f"| {r['setting']} | {r['seeds']} × {r['n'] // r['seeds']} | " + " | ".join(cells) + " |")
        for label, c, m, lo, hi in BASELINES[domain]:
            ax.errorbar([c], [m], yerr=[[m - lo], [hi - m]], fmt="s", color="black" if "prior" in label else "tab:blue",
                        markersize=5, capsize=2)
            ax.annotate(label, (c, m), fontsize=6, xytext=(3, -8), textcoords="offset points")
        for form, colour, fields in (("decoupled", "tab:red", 3), ("domain-text", "tab:green", 3),
                                     ("domain-text-bands", "tab:purple", 4)):
            pts = [r for r in rows if r["setting"].split(":")[0] == form and len(r["setting"].split(":")) == fields]
            if pts:
                ax.errorbar([r["control_top1"] for r in pts], [r[fd] for r in pts],
                            xerr=[r["control_top1_se"] for r in pts],
                            yerr=[[r[fd] - r[f"{fd}_min"] for r in pts], [r[f"{fd}_max"] - r[fd] for r in pts]],
                            fmt="o", color=colour, markersize=4, capsize=2,
                            label=f"ours, {form} (Eq. A)" if form == "decoupled" else f"ours, {form}")
                for r in pts:
                    ax.annotate("/".join(r["setting"].split(":")[1:]), (r["control_top1"], r[fd]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points", color=colour)
        tuned = Path(f"{args.tuned}/tune-{domain}/tune.json") if args.tuned else None
        if tuned is not None and tuned.is_file():  # `indomain tune`'s choice: the default stored with the model
            c = json.loads(tuned.read_text())["choice"]
            name = f"{c['guidance_form']}:{c['w_d']:g}:{c['w_c']:g}" + (":1" if c["guidance_form"] == "domain-text-bands" else "")
            for r in (r for r in rows if r["setting"] == name and r["seeds"] > 1):
                ax.scatter([r["control_top1"]], [r[fd]], s=220, facecolors="none", edgecolors="black", linewidths=1.5,
                           zorder=5, label="indomain tune's choice (stored, the default)")
        unc = [r for r in rows if r["setting"].startswith("uncond:2.5")]
        for r in unc:
            ax.axhline(r[fd], color="gray", linestyle=":", linewidth=1)
            ax.text(0.3, r[fd], "domain model alone, no prompt (w_d 2.5)", fontsize=6, color="gray",
                    transform=ax.get_yaxis_transform(), va="bottom")
        ax.set_title(f"{domain}: held-out prompts", fontsize=9)
        ax.set_xlabel("control_top1 (higher is better)")
        ax.set_ylabel(f"{fd} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"\nplot: {args.plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["eval", "terms", "report"])
    ap.add_argument("--bench", default=None)
    ap.add_argument("--root", default="outputs", help="report: where the dc-<domain>/ folders are")
    ap.add_argument("--domains", nargs="*", default=["openmoji", "sepia", "sticker"], help="report: the domains")
    ap.add_argument("--plot", default="outputs/domain_control.png", help="report: the plot's path")
    ap.add_argument("--tuned", default=None, help="report: a folder of `indomain tune` runs, tune-<domain>/, whose "
                    "choices are ringed")
    ap.add_argument("--domain", default="openmoji")
    ap.add_argument("--out", default=None)
    ap.add_argument("--settings", nargs="*", default=["decoupled:2.5:2.5", "uncond:2.5:0", "domain-text:2.5:2.5"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--num-prompts", type=int, default=32)
    args = ap.parse_args()
    {"eval": cmd_eval, "terms": cmd_terms, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
