"""Is a per-layer constant text stream sound for an MMDiT (SD3) prior? Measure it before offering it.

    python experiments/nulltext_gap_sd3.py [--prior runs/families_toy/sd3-prior]

In a UNet the text enters only through cross-attention, whose output under the empty prompt is nearly constant, so
the paper replaces it by a calibrated per-layer constant (its gap on tiny random UNets: experiments/nulltext_gap.py,
docs/NULLTEXT.md). In an MMDiT the text tokens are a second stream: every block mixes them with the image
tokens in joint attention and modulates them with the timestep. The cheapest analogue of the paper's constant holds
the text stream entering each block at its calibrated mean (per token, averaged over noise draws and timesteps the
way `calibrate_null_text_features` averages), so the text side of every block could be precomputed once.

This script measures the relative L2 gap of that variant's velocity to the exact null-text prediction (the prior fed
the empty prompt), on tiny random SD3 transformers and, if given, on a trained toy prior.
"""

from __future__ import annotations

import argparse
import statistics as st

import torch

from indomain.pipeline_sd3 import InDomainSD3Pipeline
from indomain.testing import tiny_sd3_components

TIMESTEPS = [20.0, 250.0, 500.0, 750.0, 980.0]


@torch.no_grad()
def gaps(transformer: torch.nn.Module, null: dict, size: int, seed: int = 0) -> list[tuple[float, float]]:
    """(t, relative gap) of the constant-text-stream variant against the exact null-text prediction."""
    blocks = list(transformer.transformer_blocks)
    text, pooled = null["text"], null["pooled"]
    c = transformer.config.in_channels
    # calibration: the mean text stream entering each block, over 4 noise draws x 10 timesteps
    sums: list = [0.0 for _ in blocks]  # the stream after the caption projection, per block
    count = 0

    def record(k):
        def hook(module, args, kwargs):
            sums[k] += kwargs["encoder_hidden_states"].double().sum(0)
        return hook

    handles = [b.register_forward_pre_hook(record(k), with_kwargs=True) for k, b in enumerate(blocks)]
    noise = torch.randn(4, c, size, size, generator=torch.Generator().manual_seed(seed))
    for t in torch.linspace(0, 999, 10):
        transformer(hidden_states=noise, timestep=t.expand(4), encoder_hidden_states=text.expand(4, -1, -1),
                    pooled_projections=pooled.expand(4, -1))
        count += 4
    for h in handles:
        h.remove()
    means = [(s / count).to(text.dtype) for s in sums]

    def fix(k):
        def hook(module, args, kwargs):
            kwargs["encoder_hidden_states"] = means[k].expand_as(kwargs["encoder_hidden_states"])
            return args, kwargs
        return hook

    rows = []
    for t in TIMESTEPS:
        x = torch.randn(8, c, size, size, generator=torch.Generator().manual_seed(100 + int(t)))
        kw = dict(hidden_states=x, timestep=torch.full((8,), t), encoder_hidden_states=text.expand(8, -1, -1),
                  pooled_projections=pooled.expand(8, -1))
        exact = transformer(**kw).sample
        handles = [b.register_forward_pre_hook(fix(k), with_kwargs=True) for k, b in enumerate(blocks)]
        approx = transformer(**kw).sample
        for h in handles:
            h.remove()
        rows.append((t, ((approx - exact).norm() / exact.norm()).item()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", default=None, help="also measure a trained SD3 prior folder (e.g. the families toy one)")
    args = ap.parse_args()
    results = {}
    for seed in range(3):
        c = tiny_sd3_components(seed=seed)
        pipe = InDomainSD3Pipeline(**c)
        results[f"random tiny SD3, seed {seed}"] = gaps(c["transformer"], pipe.encode_negative(None, 1, "cpu"), 16)
    if args.prior:
        pipe = InDomainSD3Pipeline.from_pretrained(args.prior)
        size = pipe.transformer.config.sample_size
        results[f"trained {args.prior}"] = gaps(pipe.transformer, pipe.encode_negative(None, 1, "cpu"), size)
    for name, rows in results.items():
        print(f"{name}: " + ", ".join(f"t={t:.0f} {g:.4f}" for t, g in rows)
              + f"  | mean {st.mean(g for _, g in rows):.4f}, max {max(g for _, g in rows):.4f}")


if __name__ == "__main__":
    main()
