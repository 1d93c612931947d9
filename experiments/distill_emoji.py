"""Guidance distillation in the emoji world: a student against its teacher at the same weights.

    python experiments/distill_emoji.py --out outputs/distill_emoji
    python experiments/distill_emoji.py --out outputs/distill_sepia --domain sepia
    python experiments/distill_emoji.py --out outputs/distill_emoji --eval-only --num-emoji 96 --eval-seeds 0 1

1. Renders the ``--domain`` (default OpenMoji; the seen emoji, no captions) and trains the teacher's null-text domain model with
   `indomain train` (``--train-steps``, timed), unless ``--out/ours`` holds one already.
2. Distils prior + domain model into a student with `indomain distill` (``--distill-steps``, timed): prompts are the
   seen emoji names, a share of empty prompts, w_d in [1, 5], w_c in [1, 6].
3. For held-out emoji prompted by name (neither model saw them), teacher (Eq. A, 3 UNet rows per step) and student
   (1 row per step) sample the same seeds at each (w_d, w_c) of a small grid; the shipped emoji evaluators score them
   (`control_top1`: top-1 of 10 is the prompted emoji; `fd_<domain>`: Fréchet distance to the domain's renders). The
   unconditional rows (no prompt) score FD only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = [(1.5, 2.5), (2.5, 2.5), (4.0, 2.5), (2.5, 5.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/distill_emoji")
    ap.add_argument("--train-steps", type=int, default=300, help="the teacher's domain model (the demo's 300)")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lora-rank", type=int, default=None)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--num-emoji", type=int, default=48, help="held-out emoji prompts per setting (one image each)")
    ap.add_argument("--steps", type=int, default=25, help="sampler steps (the teacher's; the student's by default)")
    ap.add_argument("--student-steps", type=int, default=None, help="the student's sampler steps (e.g. 4 for a "
                    "consistency student)")
    ap.add_argument("--objective", default="guidance", choices=["guidance", "consistency"])
    ap.add_argument("--empty-prompt-share", type=float, default=None, help="share of empty-prompt rows (default: "
                    "`indomain distill`'s)")
    ap.add_argument("--lr-scheduler", default="constant", help="the student's LR schedule (a diffusers "
                    "get_scheduler name, e.g. cosine: decays to zero at --distill-steps)")
    ap.add_argument("--student-ema-decay", type=float, default=0.99, help="the student's EMA decay (the teacher "
                    "keeps 0.99; diffusers' EMA warms up as (1 + step) / (10 + step) below this)")
    ap.add_argument("--resume", default=None, help="continue the student's run from this checkpoint (e.g. to train "
                    "it longer with a larger --distill-steps)")
    ap.add_argument("--checkpointing-steps", type=int, default=500, help="save a resumable checkpoint this often")
    ap.add_argument("--tag", default="", help="suffix of the student folder and result files (one that starts with a "
                    "dash is written --tag=-x, as argparse would read -x as an option)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", default="openmoji", help="the emoji-world domain (openmoji, sepia, sticker): renders "
                    "trained on and the scorer's fd_<domain>")
    ap.add_argument("--unconditional-student", default=None, metavar="DIR", help="with --eval-only: pair the student "
                    "with this unconditional-only one (distilled with --empty-prompt-share 1), which answers the "
                    "rows without a prompt")
    ap.add_argument("--eval-only", action="store_true", help="score the existing teacher and student (no training)")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=None, help="sampling seeds of the comparison, one row "
                    "per seed (default: --seed); the benchmark's protocol is --num-emoji 96 --eval-seeds 0 1")
    args = ap.parse_args()

    import torch

    from indomain.distill import DistillConfig, distill
    from indomain.train import TrainConfig, train
    from indomain.world.benchmark import render_domain
    from indomain.world.prior import emoji_prior_dir

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = str(emoji_prior_dir())
    images, seen, held_out = render_domain(out, 32, None, args.domain)
    common = dict(prior=prior, images=str(images), resolution=32, train_batch_size=args.batch,
                  learning_rate=args.learning_rate, ema_decay=0.99, seed=args.seed, overwrite=True,
                  latent_cache=str(out / "latent_cache"))
    cost = {}
    student_dir = out / (("student" if args.lora_rank is None else f"student-lora{args.lora_rank}") + args.tag)
    if args.eval_only:
        return compare(args, out, prior, held_out, student_dir, cost)
    if not (out / "ours" / "config.json").is_file():
        start = time.perf_counter()
        train(TrainConfig(output=str(out / "ours"), max_train_steps=args.train_steps,
                          checkpointing_steps=args.train_steps, checkpoints_total_limit=1, **common))
        cost["domain_model_train_s"] = time.perf_counter() - start
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(seen) + "\n")
    start = time.perf_counter()
    extra = {} if args.empty_prompt_share is None else {"empty_prompt_share": args.empty_prompt_share}
    extra |= {"lr_scheduler": args.lr_scheduler, "ema_decay": args.student_ema_decay}
    distill(DistillConfig(output=str(student_dir), domain=str(out / "ours"), prompts=str(prompts),
                          max_train_steps=args.distill_steps,
                          checkpointing_steps=min(args.checkpointing_steps, args.distill_steps), checkpoints_total_limit=2,
                          lora_rank=args.lora_rank, objective=args.objective, resume=args.resume,
                          **(common | extra | ({"overwrite": False} if args.resume else {}))))
    cost["distill_s"] = time.perf_counter() - start
    cost.update({"train_steps": args.train_steps, "distill_steps": args.distill_steps, "batch": args.batch})
    print(json.dumps(cost), flush=True)
    compare(args, out, prior, held_out, student_dir, cost)


def compare(args: argparse.Namespace, out: Path, prior: str, held_out: list, student_dir: Path, cost: dict) -> None:
    """Teacher against student on held-out emoji at every weight of GRID (and unconditional), one row per seed."""
    import torch

    from indomain import InDomainPipeline
    from indomain.world.evaluators import load_evaluators
    from indomain.world.render import evenly_spaced

    teacher = InDomainPipeline.from_pretrained(prior, domain_unet=out / "ours")
    pair = [student_dir, args.unconditional_student] if args.unconditional_student else student_dir
    student = InDomainPipeline.from_pretrained(prior, distilled=pair)
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    names = [e if isinstance(e, str) else e.name for e in evenly_spaced(held_out, args.num_emoji)]
    scorer = load_evaluators().scorer(k=10, domain=args.domain)
    from indomain.outputs import make_grid

    name = student_dir.name + (f"+{Path(args.unconditional_student).name}" if args.unconditional_student else "") + ("" if args.eval_seeds is None and args.num_emoji == 48 else
                               f"-n{args.num_emoji}-seeds{'_'.join(map(str, args.eval_seeds or [args.seed]))}")
    rows = []
    for (w_d, w_c), label, seed in [(w, m, s) for w in [*GRID, (2.5, None)] for m in ("teacher", "student")
                                    for s in args.eval_seeds or [args.seed]]:
        pipe = teacher if label == "teacher" else student
        if pipe is student and w_c is not None and student.student.unconditional_only:
            continue  # a student distilled without prompts refuses one
        prompts_ = names if w_c is not None else None
        gens = [torch.Generator().manual_seed(seed * 10_000 + i) for i in range(len(names))]
        start = time.perf_counter()
        imgs = []
        steps = args.student_steps if label == "student" and args.student_steps else args.steps
        for i in range(0, len(names), 16):
            kw = dict(prompt=prompts_[i:i + 16]) if prompts_ else dict(num_images_per_prompt=len(gens[i:i + 16]))
            imgs += pipe(**kw, domain_guidance_scale=w_d, guidance_scale=w_c or 2.5, num_inference_steps=steps,
                         generator=gens[i:i + 16]).images
        seconds = time.perf_counter() - start
        score = scorer(imgs, names)
        row = {"model": label, "seed": seed, "steps": steps, "w_d": w_d, "w_c": w_c, "n": len(imgs),
               "s_per_image": seconds / len(imgs), **{k: v for k, v in score.items()}}
        if w_c is None:
            row.pop("control_top1", None)
        else:
            row["control_top1_se"] = math.sqrt(row["control_top1"] * (1 - row["control_top1"]) / len(imgs))
        rows.append(row)
        print(json.dumps(row), flush=True)
        make_grid([im.resize((64, 64)) for im in imgs[:16]], ncols=16).save(
            out / f"{name}_{label}_wd{w_d}_wc{w_c}_seed{seed}.png")
    (out / f"results_{name}.json").write_text(json.dumps({"args": vars(args), "cost": cost, "rows": rows},
                                                                     indent=2))
    fd = f"fd_{args.domain}"
    lines = [f"| w_d | w_c | model | seed | steps | control_top1 | {fd} | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        control = f"{r['control_top1']:.3f} ± {r['control_top1_se']:.3f}" if "control_top1" in r else "—"
        lines.append(f"| {r['w_d']} | {r['w_c'] if r['w_c'] is not None else '— (no prompt)'} | {r['model']} | "
                     f"{r['seed']} | {r['steps']} | {control} | {r[fd]:.2f} | {r['s_per_image']:.3f} |")
    (out / f"results_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
