"""One picture per emoji-world domain from finished benchmark runs: held-out prompts, each method at one weight.

    python experiments/domains_figure.py outputs/benchmark outputs/benchmark-sepia outputs/benchmark-sticker \
        --out docs/images/domains_examples.png

Per domain, a block of rows over the same first K held-out prompts (seed 0): the real renders in the domain's style,
the prior (w_c = 2.5), the full fine-tune + CFG (2.5), rectified CFG (w_d = 2.5) and ours (w_d = w_c = 2.5). The images
are the benchmark's own files (eval-held-out-seed0/images/<setting>/), so the picture shows what the tables score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = (("prior", "prior_wd0_wc2.5"), ("fine-tune + CFG", "finetune-cfg_wd0_wc2.5"),
        ("rectified", "rectified_wd2.5_wc0"), ("ours", "ours_wd2.5_wc2.5"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmarks", nargs="+", help="finished `indomain world benchmark` folders")
    ap.add_argument("--out", default="docs/images/domains_examples.png")
    ap.add_argument("--k", type=int, default=12, help="prompts per row")
    ap.add_argument("--scale", type=int, default=3, help="pixel upscaling")
    args = ap.parse_args()

    from PIL import Image, ImageDraw

    from indomain.world.domains import get_domain
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    blocks = []
    for folder in map(Path, args.benchmarks):
        config = json.loads((folder / "results.json").read_text())["config"]
        domain = get_domain(config.get("domain", "openmoji"))
        _, held = split_emoji(list_emoji(), seed=config["seed"])
        by_name = {e.name: e for e in held}
        prompts = evenly_spaced([e.name for e in held], config["num_prompts"])[: args.k]
        rows = [(f"{domain.name}: real renders", [domain.render(by_name[p], config["resolution"]) for p in prompts])]
        images = folder / "eval-held-out-seed0" / "images"
        rows += [(label, [Image.open(images / setting / f"{i:06d}.png").convert("RGB") for i in range(len(prompts))])
                 for label, setting in ROWS]
        blocks.append(rows)

    side = 32 * args.scale
    label_w, gap = 150, 10
    height = sum(len(rows) * side + gap for rows in blocks)
    canvas = Image.new("RGB", (label_w + args.k * side, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for rows in blocks:
        for label, row in rows:
            draw.text((4, y + side // 2 - 6), label, fill="black")
            for j, image in enumerate(row):
                canvas.paste(image.resize((side, side), Image.NEAREST), (label_w + j * side, y))
            y += side
        y += gap
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
