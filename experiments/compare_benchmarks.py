"""Headline rows of `indomain world benchmark` runs side by side (for example the same domain on two priors).

    python experiments/compare_benchmarks.py outputs/prior-v1/benchmark outputs/benchmark --labels "prior v1" "prior v2"

For each split: the prior at w_c 2.5, each baseline's best FD, rectified's best FD, ours at the official weights
(2.5, 2.5), ours' best FD and ours' most control, as control_top1 / FD (seed range). Reads each run's results.json;
the FD column is the run's own domain (`fd_<domain>`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def headline(rows: list[dict], fd: str) -> dict[str, dict]:
    """The rows worth comparing across runs, by label."""
    def best(method: str) -> dict | None:
        cands = [r for r in rows if r["method"] == method and r.get(fd) is not None]
        return min(cands, key=lambda r: r[fd]) if cands else None

    ours = [r for r in rows if r["method"] == "ours" and (r["w_d"] or 0) > 0]
    picks = {
        "prior, w_c 2.5": next((r for r in rows if r["method"] == "prior" and r["w_c"] == 2.5), None),
        "full fine-tune + CFG, best FD": best("finetune-cfg"),
        "LoRA fine-tune + CFG, best FD": best("finetune-lora-cfg"),
        "rectified, best FD": best("rectified"),
        "ours (2.5, 2.5)": next((r for r in ours if r["w_d"] == 2.5 and r["w_c"] == 2.5), None),
        "ours, best FD": min(ours, key=lambda r: r[fd]) if ours else None,
        "ours, most control": max(ours, key=lambda r: (r["control_top1"], -r[fd])) if ours else None,
    }
    return {k: v for k, v in picks.items() if v is not None}


def cell(r: dict, fd: str) -> str:
    weights = "" if r["w_d"] is None else f" at ({r['w_d']:g}, {r['w_c']:g})"
    return f"{r['control_top1']:.3f} / {r[fd]:.2f} ({r[fd + '_min']:.2f}–{r[fd + '_max']:.2f}){weights}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="benchmark output folders (each with results.json)")
    ap.add_argument("--labels", nargs="+", help="a column label per run (default: the folder names)")
    args = ap.parse_args()
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(args.runs)} runs but {len(labels)} labels")
    results = [json.loads((Path(r) / "results.json").read_text()) for r in args.runs]
    for split in results[0]["splits"]:
        tables = []
        for res in results:
            rows = res["splits"][split]["rows"]
            fd = next(k for k in rows[0] if k.startswith("fd_") and not k.endswith(("_min", "_max")))
            tables.append((headline(rows, fd), fd))
        print(f"\n{split} prompts: control_top1 / {tables[0][1]} (seed range)\n")
        print("| setting | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        for key in tables[0][0]:
            print(f"| {key} | " + " | ".join(cell(t[key], fd) if key in t else "–" for t, fd in tables) + " |")


if __name__ == "__main__":
    main()
