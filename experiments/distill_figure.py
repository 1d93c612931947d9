"""Teacher against student at the same seeds, from finished `distill_emoji.py` runs.

    python experiments/distill_figure.py outputs/paths_openmoji outputs/paths_sepia \
        --result student-n96-seeds0_1 --out docs/images/distill_student.png

Per run, four rows of the first held-out emoji (seed 0, the grids `distill_emoji.py` saved next to its results): the
teacher (Eq. A, three UNet rows per step) and the student (one) at w_d = w_c = 2.5 with the emoji's name as prompt,
then both without a prompt. The same seed is the same starting noise, so a column compares like with like.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = (("teacher, prompted", "teacher", "2.5"), ("student, prompted", "student", "2.5"),
        ("teacher, no prompt", "teacher", "None"), ("student, no prompt", "student", "None"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="distill_emoji.py --out folders")
    ap.add_argument("--result", default="student-n96-seeds0_1", help="the grids' prefix: <student folder>-n<N>-seeds<..>")
    ap.add_argument("--w-d", default="2.5", help="the domain weight of the rows (as in the grids' names)")
    ap.add_argument("--out", default="docs/images/distill_student.png")
    args = ap.parse_args()

    from PIL import Image, ImageDraw

    blocks = []
    for run in map(Path, args.runs):
        domain = json.loads((run / f"results_{args.result}.json").read_text())["args"]["domain"]
        rows = []
        for label, model, w_c in ROWS:
            grid = run / f"{args.result}_{model}_wd{args.w_d}_wc{w_c}_seed0.png"
            if not grid.is_file():
                raise SystemExit(f"no grid {grid}: run distill_emoji.py with this --out first")
            rows.append((f"{domain}: {label}", Image.open(grid).convert("RGB")))
        blocks.append(rows)

    label_w, gap = 170, 10
    width = label_w + max(image.width for rows in blocks for _, image in rows)
    height = sum(sum(image.height for _, image in rows) + gap for rows in blocks)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for rows in blocks:
        for label, image in rows:
            draw.text((4, y + image.height // 2 - 6), label, fill="black")
            canvas.paste(image, (label_w, y))
            y += image.height
        y += gap
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
