"""Guidance variants tried for the domain under a prompt, on `domain_control.py`'s protocol (its 96 held-out prompts,
image i from seed s x 1,000,000 + i, DPM-Solver++ 20 steps, the shipped evaluators), by replacing the pipeline's
prediction with a hand-written combination of eps_prior(∅), eps_prior(c), eps_dt(∅), eps_dt(c) (q = dt(c) − dt(∅),
p = prior(c) − prior(∅), d = dt(∅) − prior(∅)):

    SEEDS="0" python experiments/guidance_variants.py sticker outputs/bench-sticker outputs/gv-sticker \
        dt:4:2.5 sc:4:2.5:1 late:4:2.5:5:0.5 hp:4:1:6:1.5

* ``dt:w_d:w_c``: domain-text (reproduces `domain_control.py eval domain-text:w_d:w_c` to the digit);
* ``sc:w_d:w_c:lam``: domain-text + lam (q − p), a push away from the prior's own rendering of the prompt;
* ``late:w_d:w_c1:w_c2:f``: domain-text with w_c1 before the fraction f of the steps, w_c2 after;
* ``hp:w_d:w_lo:w_hi:sigma``: q's low band (a Gaussian of sigma latent pixels) at w_lo, the rest at w_hi: the library's
  `domain-text-bands` form (sigma 1.5 of the 8-pixel latent = its default 3/16; equal images, checked);
* ``hpd:w_d:w_c:w_dlo:sigma``: domain-text with the domain term's low band at w_dlo.

Results go to ``<out>/variants.json``, one (setting, seed) at a time (a rerun skips what is done).
"""
import json, os, sys, time
from pathlib import Path
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
import torch
from domain_control import load, held_out_prompts
from indomain.guidance import lowpass
from indomain.nulltext import prior_text_pathway
from indomain.world.benchmark import SEED_STRIDE
from indomain.world.evaluators import load_evaluators
from indomain.outputs import make_grid

def blur(x, s):
    """The library's low band (`indomain.guidance.lowpass`) with sigma in latent pixels."""
    return lowpass(x, s / min(x.shape[-2:]))


def run(pipe, spec, names, seed, steps=20, batch=16):
    kind, *a = spec.split(":"); a = [float(v) for v in a]
    prior, dom = pipe.unet, pipe.domain_unet
    original = pipe.predict
    state = {}
    def predict(latents, t, c, i, n):
        x = pipe.scheduler.scale_model_input(latents, t)
        cond, null = state["cond"], state["null"]
        with torch.no_grad():
            pu, pc = prior(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample.chunk(2)
            with prior_text_pathway(dom, prior) as unet:
                du, dc = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample.chunk(2)
        frac = i / n
        q, p = dc - du, pc - pu
        if kind == "dt":          # domain-text w_d w_c
            wd, wc = a; return pu + wd * (du - pu) + wc * q
        if kind == "sc":          # style contrast: + lam (q - p)
            wd, wc, lam = a; return pu + wd * (du - pu) + wc * q + lam * (q - p)
        if kind == "late":        # w_c1 before split, w_c2 after
            wd, wc1, wc2, split = a; return pu + wd * (du - pu) + (wc1 if frac < split else wc2) * q
        if kind == "hp":          # q split: low-pass (blur sigma) at w_lo, rest at w_hi
            wd, wlo, whi, s = a; lo = blur(q, s); return pu + wd * (du - pu) + wlo * lo + whi * (q - lo)
        if kind == "hpd":         # domain term split: low-pass of d gets extra weight
            wd, wc, wdlo, s = a; d = du - pu; lo = blur(d, s); return pu + wd * d + (wdlo - wd) * lo + wc * q
        raise SystemExit(kind)
    pipe.predict = predict
    images = []
    try:
        for i in range(0, len(names), batch):
            chunk = names[i:i + batch]
            state["cond"] = pipe.encode_text(chunk, "cpu"); state["null"] = pipe.encode_text([""] * len(chunk), "cpu")
            gens = [torch.Generator("cpu").manual_seed(seed * SEED_STRIDE + j) for j in range(i, i + len(chunk))]
            images += pipe(chunk, domain_guidance_scale=2.5, guidance_scale=2.5, num_inference_steps=steps,
                           generator=gens, guidance_form="decoupled").images
    finally:
        pipe.predict = original
    return images

if __name__ == "__main__":
    domain, bench, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]); specs = sys.argv[4:]
    seeds = [int(s) for s in os.environ.get("SEEDS", "0").split()]
    out.mkdir(parents=True, exist_ok=True); rec = out / "variants.json"
    rows = json.loads(rec.read_text()) if rec.exists() else []
    done = {(r["setting"], r["seed"]) for r in rows}
    pipe = load(bench); scorer = load_evaluators().scorer(k=10, domain=domain)
    prompts = held_out_prompts(); names = [prompts[i % len(prompts)] for i in range(96)]
    for spec in specs:
        for seed in seeds:
            if (spec, seed) in done: continue
            t0 = time.time(); images = run(pipe, spec, names, seed); s = scorer(images, names)
            row = {"setting": spec, "seed": seed, "domain": domain, "seconds": round(time.time() - t0, 1), **{k: float(v) for k, v in s.items()}}
            rows.append(row); rec.write_text(json.dumps(rows, indent=1))
            if seed == seeds[0]: make_grid(images[:32], ncols=8).save(out / f"{spec.replace(':', '_')}.png")
            print(spec, seed, round(row["control_top1"], 3), round(row[f"fd_{domain}"], 2), row["seconds"], flush=True)
