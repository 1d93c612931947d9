"""How strong are the two guidance terms of Eq. A, per prior? The domain term eps_domain(x) − eps_prior(x, ∅) and the
prompt term eps_prior(x, c) − eps_prior(x, ∅), as mean L2 norms over held-out emoji names at a few timesteps.

    python experiments/guidance_terms.py --pair <prior v1 pipeline> outputs/prior-v1/demo/ours \
        --pair <prior v2 pipeline> outputs/demo/ours --labels "prior v1" "prior v2"

At equal weights the larger term steers more: the ratio |domain| / |prompt| says how far toward the domain the same
(w_d, w_c) goes on each prior. x is pure Gaussian noise in latent space at each t (not a sampling trajectory), one
fixed draw per timestep, the same for every pair.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("PRIOR", "DOMAIN"),
                    help="a prior pipeline folder and a null-text domain model trained on it (repeatable)")
    ap.add_argument("--labels", nargs="+", help="one label per --pair (default: the domain folders)")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[900, 600, 300, 100])
    ap.add_argument("--num-names", type=int, default=32, help="held-out emoji names, evenly spaced")
    args = ap.parse_args()
    labels = args.labels or [d for _, d in args.pair]
    if len(labels) != len(args.pair):
        ap.error(f"{len(args.pair)} pairs but {len(labels)} labels")

    import torch

    from indomain import InDomainPipeline
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    names = [e.name for e in evenly_spaced(split_emoji(list_emoji(), seed=0)[1], args.num_names)]
    print("| pair | t | domain term | prompt term | domain / prompt | eps_prior(∅) |")
    print("|---|---|---|---|---|---|")
    for label, (prior, domain) in zip(labels, args.pair):
        pipe = InDomainPipeline.from_pretrained(prior, domain_unet=domain)
        pipe.set_progress_bar_config(disable=True)
        cond, uncond = pipe.encode_prompt(names, "cpu", 1, True, [""] * len(names))[:2]
        gen = torch.Generator().manual_seed(0)
        shape = (len(names), pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        for t in args.timesteps:
            x, tt = torch.randn(shape, generator=gen), torch.full((len(names),), t)
            with torch.no_grad():
                eps_u = pipe.unet(x, tt, encoder_hidden_states=uncond).sample
                eps_c = pipe.unet(x, tt, encoder_hidden_states=cond).sample
                eps_d = pipe.domain_unet(x, tt, encoder_hidden_states=uncond).sample
            norm = lambda v: v.flatten(1).norm(dim=1).mean().item()  # noqa: E731
            d, p = norm(eps_d - eps_u), norm(eps_c - eps_u)
            print(f"| {label} | {t} | {d:.2f} | {p:.2f} | {d / p:.2f} | {norm(eps_u):.2f} |", flush=True)


if __name__ == "__main__":
    main()
