"""Where a distilled student misses its teacher: on the states it was trained on, or on the sampler's own path.

    python experiments/distill_paths.py --out outputs/distill_sepia --student outputs/distill_sepia/student

For 24 training prompts (every 37th of ``--out/prompts.txt``) and 24 domain images, at w_d = w_c = 2.5 and at each
step t of a 25-step DDIM schedule, the mean squared difference between the student's prediction and the teacher's
(Eq. A) on two kinds of input:

- **domain image**: a domain image noised to t under an unrelated prompt (the rows `indomain distill
  --prompted-states domain-images` trains on; the images have no captions, so prompt and picture disagree);
- **teacher path**: the teacher's own DDIM path for that prompt from noise (where sampling goes).

Also on the teacher path: the untrained student (the prior's ``eps(x, c)``) and the prior's CFG without the domain
term (the teacher at w_d = 0), as yardsticks. The empty prompt's rows are the same with ``∅``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="a distill_emoji.py folder (ours/, domain_images/, prompts.txt)")
    ap.add_argument("--student", required=True, help="the student folder")
    args = ap.parse_args()

    import numpy as np
    import torch
    from diffusers import DDIMScheduler
    from PIL import Image

    from indomain import InDomainPipeline
    from indomain.student import call_student, load_student, teacher_prediction, weight_rows
    from indomain.world.prior import emoji_prior_dir

    torch.set_num_threads(1)
    out = Path(args.out)
    pipe = InDomainPipeline.from_pretrained(str(emoji_prior_dir()), domain_unet=out / "ours")
    student, _ = load_student(args.student, pipe.unet)
    prompts = [line.strip() for line in open(out / "prompts.txt") if line.strip()][::37][:24]
    files = sorted((out / "domain_images").glob("*.png"))[::41][:24]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                          .permute(2, 0, 1) for f in files])
    n = len(prompts)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        text, null = pipe.encode_text(prompts, "cpu"), pipe.encode_negative(None, 1, "cpu").expand(n, -1, -1)
    w_d, w_c, rows = torch.full((n,), 2.5), torch.full((n,), 2.5), weight_rows(2.5, 2.5, n, latents)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(25)

    def mse(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b) ** 2).mean().item()

    g = torch.Generator().manual_seed(0)
    print("| prompt | t | student, domain image | student, teacher path | untrained student (prior eps(x, c)), "
          "teacher path | prior CFG (teacher at w_d = 0), teacher path |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for label, c in (("a prompt", text), ("∅", null)):
            noise, x = torch.randn(latents.shape, generator=g), torch.randn(latents.shape, generator=g)
            sums = np.zeros(4)
            for k, t in enumerate(sched.timesteps):
                tt = t.expand(n)
                off = sched.add_noise(latents, noise, tt)
                t_off = teacher_prediction(pipe.unet, pipe.domain_unet, off, tt, c, null, w_d, w_c)
                t_on = teacher_prediction(pipe.unet, pipe.domain_unet, x, tt, c, null, w_d, w_c)
                row = [mse(call_student(student, off, tt, c, rows), t_off), mse(call_student(student, x, tt, c, rows), t_on),
                       mse(pipe.unet(x, tt, encoder_hidden_states=c).sample, t_on),
                       mse(teacher_prediction(pipe.unet, pipe.domain_unet, x, tt, c, null, 0 * w_d, w_c), t_on)]
                sums += row
                if k % 3 == 0:
                    print(f"| {label} | {int(t)} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
                x = sched.step(t_on, t, x).prev_sample
            print(f"| {label} | mean of 25 | " + " | ".join(f"**{v:.4f}**" for v in sums / 25) + " |", flush=True)


if __name__ == "__main__":
    main()
