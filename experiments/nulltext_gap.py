# Measure the calibrated null-text UNet's gap to the prior's unconditional prediction (tiny model).
import torch, warnings
warnings.filterwarnings("ignore")
from indomain import NullTextUNet
from indomain.nulltext import ConstantCrossAttention
from indomain.testing import tiny_sd_components
torch.manual_seed(0)
rows = []
for seed in range(3):
    c = tiny_sd_components(seed=seed)
    tok, te, unet = c["tokenizer"], c["text_encoder"], c["unet"]
    null = te(tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0].detach()
    model = NullTextUNet.from_prior(unet, null, scheduler=c["scheduler"])
    blank = NullTextUNet.from_prior(unet, null)
    for m in blank.modules():
        if isinstance(m, ConstantCrossAttention): m.null_text_feature.zero_()
    with torch.no_grad():
        for t in [10, 250, 500, 750, 990]:
            x = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(100 + t))
            ref = unet(x, t, null.expand(8, -1, -1)).sample
            g = ((model(x, t).sample - ref).norm() / ref.norm()).item()
            b = ((blank(x, t).sample - ref).norm() / ref.norm()).item()
            rows.append((seed, t, g, b))
import statistics as st
for r in rows: print("prior seed %d t=%4d  calibrated %.4f  zero-constant %.4f" % r)
print("mean relative L2 gap: calibrated %.4f, zero constant %.4f" % (st.mean(r[2] for r in rows), st.mean(r[3] for r in rows)))
print("max  relative L2 gap: calibrated %.4f" % max(r[2] for r in rows))
