"""Score distillation (indomain.sds), the voxel renderer (indomain.nerf) and `indomain 3d` (indomain.text3d), on tiny models."""

import dataclasses
import json

import PIL.Image
import pytest
import torch

from indomain import InDomainPipeline, NullTextUNet
from indomain.cli import main
from indomain.nerf import VoxelField, orbit_cameras, render, sample_cameras
from indomain.sds import WEIGHTINGS, ScoreDistillation, SDSConfig, view_of, view_prompts
from indomain.testing import save_tiny_prior, tiny_sd_components
from indomain.text3d import Text3DConfig, load_field, text_to_3d


@pytest.fixture(scope="module")
def pipe():
    """A tiny prior plus a calibrated null-text domain model made from it (random weights, seed 0)."""
    parts = tiny_sd_components()
    p = InDomainPipeline(**parts)
    null = p.encode_text([""], "cpu")
    domain = NullTextUNet.from_prior(parts["unet"], null, scheduler=parts["scheduler"], num_timesteps=2, batch_size=1)
    pipe = InDomainPipeline(**parts, domain_unet=domain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_sds_gradient_is_w_t_times_eps_hat_minus_eps(pipe):
    config = SDSConfig(guidance_scale=3.0, domain_guidance_scale=1.5, view_dependent=False)
    sds = ScoreDistillation(pipe, config)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = torch.tensor([200, 700])
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    out = sds(z, "red apple", torch.zeros(2), torch.zeros(2), rgb_as_latents=True, t=t, noise=noise)
    out["loss_sds"].backward()

    # Eq. A written out by hand, one UNet call per branch
    a = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    cond = pipe.encode_text(["red apple"] * 2, "cpu")
    null = pipe.encode_text([""] * 2, "cpu")
    with torch.no_grad():
        eps_u = pipe.unet(z_t, t, encoder_hidden_states=null).sample
        eps_c = pipe.unet(z_t, t, encoder_hidden_states=cond).sample
        eps_d = pipe.domain_unet(z_t, t).sample
    eps_hat = eps_u + 1.5 * (eps_d - eps_u) + 3.0 * (eps_c - eps_u)
    expected = (1 - a) * (eps_hat - noise)  # w(t) = 1 - alphabar_t
    torch.testing.assert_close(z.grad * 2, expected, rtol=1e-4, atol=1e-5)  # ∂loss/∂z = g / B
    assert out["timesteps"].tolist() == [200, 700] and out["prompts"] == ["red apple"] * 2


def test_weightings_and_settings_are_checked(pipe):
    t = torch.tensor([100, 900])
    a = pipe.scheduler.alphas_cumprod[t]
    expected = {"sds": 1 - a, "uniform": torch.ones(2), "fantasia3d": a.sqrt() * (1 - a)}
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(Text3DConfig)}
    assert tuple(choices["weighting"]) == WEIGHTINGS  # the CLI lists them without importing torch
    for name in WEIGHTINGS:
        torch.testing.assert_close(ScoreDistillation(pipe, SDSConfig(weighting=name)).weight(t).flatten(), expected[name])
    with pytest.raises(ValueError, match="weighting"):
        SDSConfig(weighting="sjc")
    with pytest.raises(ValueError, match="min_step_percent"):
        SDSConfig(min_step_percent=0.5, max_step_percent=0.4)
    sds = ScoreDistillation(pipe, SDSConfig(max_step_percent=0.98, max_step_percent_end=0.5))
    sds.update_step(0, 50, 100)
    assert (sds.min_step, sds.max_step) == (20, 740)


def test_view_dependent_prompts_follow_the_azimuth():
    config = SDSConfig()
    assert [view_of(a, 0.0, config) for a in (0, 30, -44, 60, -90, 140, 180, -170, 200)] == [
        "front", "front", "front", "side", "side", "back", "back", "back", "back"]
    assert view_of(0.0, 70.0, config) == "overhead"
    prompts = view_prompts("owl", torch.tensor([0.0, 0.0]), torch.tensor([10.0, 100.0]), config)
    assert prompts == ["front view of owl", "side view of owl"]
    assert view_prompts("owl", torch.zeros(2), torch.tensor([10.0, 100.0]), SDSConfig(view_dependent=False)) == ["owl"] * 2


def test_2d_score_distillation_pulls_an_image_to_what_the_prior_knows(pipe):
    """threestudio's 2-D playground: optimise one 32-px image through the tiny VAE. The prior is the exact denoiser
    of a single image (the score of a point mass), so SDS has something to distill: the loss on fixed probes falls."""
    target = torch.ones(1, 3, 32, 32)
    target[:, 1:, 8:24, 8:24] = 0
    with torch.no_grad():
        z_star = pipe.vae.encode(target * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    alphas = pipe.scheduler.alphas_cumprod

    class PointMassDenoiser(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
            a = alphas[t].view(-1, 1, 1, 1)
            return ((x - a.sqrt() * z_star) / (1 - a).sqrt(),)

    known = InDomainPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)
    known.unet = PointMassDenoiser()
    sds = ScoreDistillation(known, SDSConfig(guidance_scale=0.0, view_dependent=False))
    image = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    optimizer = torch.optim.Adam([image], lr=0.05)
    probe_t, probe_noise = torch.tensor([100, 300, 500, 700, 900]), torch.randn(5, 4, 16, 16, generator=torch.Generator().manual_seed(1))

    def probe_loss() -> float:
        with torch.no_grad():
            z = sds.encode_images(image).expand(5, -1, -1, -1)
            return sds(z, "", torch.zeros(5), torch.zeros(5), rgb_as_latents=True, t=probe_t, noise=probe_noise)["loss_sds"].item()

    before, gen = probe_loss(), torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = sds(image, "", torch.zeros(1), torch.zeros(1), generator=gen)["loss_sds"]
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
        optimizer.step()
    assert probe_loss() < 0.8 * before

    # the same loop with the real tiny UNets (prior + domain + control): the gradients reach the image, finite
    sds = ScoreDistillation(pipe, SDSConfig(guidance_scale=7.5, domain_guidance_scale=2.5))
    image.grad = None
    sds(image, "red apple", torch.tensor([10.0]), torch.tensor([120.0]), generator=gen)["loss_sds"].backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_renderer_shapes_camera_convention_and_density_gradient():
    field = VoxelField(resolution=8, blob_radius=0.6)
    with torch.no_grad():
        field.color[:, 0, :, :, 5:] = 4.0  # red albedo on the +x side: the object's front
    cams = sample_cameras(2, torch.Generator().manual_seed(0))
    out = render(field, cams, 12, 16, num_samples=16, generator=torch.Generator().manual_seed(1))
    assert out.rgb.shape == (2, 3, 12, 16) and out.opacity.shape == out.depth.shape == (2, 1, 12, 16)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1 and out.opacity.max() <= 1
    out.rgb.sum().backward()
    assert torch.isfinite(field.density.grad).all() and field.density.grad.abs().sum() > 0

    with torch.no_grad():
        front, back = render(field, orbit_cameras(2), 16, 16, num_samples=16).rgb  # azimuth 0 and 180
        centre = slice(6, 10)
        assert front[0, centre, centre].mean() > front[1, centre, centre].mean() + 0.2  # red seen from the front
        assert back[0, centre, centre].mean() < front[0, centre, centre].mean() - 0.2
        empty = VoxelField(resolution=8, blob_density=0.0)
        empty.density.fill_(-20.0)
        assert torch.allclose(render(empty, orbit_cameras(1), 8, 8, num_samples=8).rgb, torch.ones(1, 3, 8, 8), atol=1e-3)


def test_three_3d_steps_write_a_turntable_and_resume_exactly(tmp_path):
    prior = save_tiny_prior(tmp_path / "prior")
    small = dict(prior=str(prior), prompt="red apple", grid_resolution=8, num_samples=8, save_every=2, turntable_frames=3)
    out = text_to_3d(Text3DConfig(out=str(tmp_path / "a"), steps=3, **small))
    names = {p.name for p in out.iterdir()}
    assert {"field.safetensors", "optimizer.safetensors", "settings.json", "turntable.gif", "turntable.png"} <= names
    assert sorted(p.name for p in (out / "progress").iterdir()) == ["step_000002.png", "step_000003.png"]
    with PIL.Image.open(out / "turntable.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (128, 128)
    record = json.loads((out / "settings.json").read_text())
    assert record["step"] == 3 and record["settings"]["prompt"] == "red apple"
    assert len((out / "log.jsonl").read_text().splitlines()) == 3

    # 2 steps, then --resume to 3: the same field as 3 steps at once (Adam state and per-step draws restored)
    text_to_3d(Text3DConfig(out=str(tmp_path / "b"), steps=2, **small))
    with pytest.raises(ValueError, match="grid-resolution"):
        text_to_3d(Text3DConfig(out=str(tmp_path / "b"), steps=3, resume=True, **(small | {"grid_resolution": 4})))
    text_to_3d(Text3DConfig(out=str(tmp_path / "b"), steps=3, resume=True, **small))
    (a, step_a), (b, step_b) = load_field(out / "field.safetensors"), load_field(tmp_path / "b" / "field.safetensors")
    assert step_a == step_b == 3
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already holds a run"):
        text_to_3d(Text3DConfig(out=str(tmp_path / "b"), steps=3, **small))


def test_3d_command_line(tmp_path, capsys):
    assert main(["3d", "--prior", "p", "--prompt", "owl", "--out", str(tmp_path / "o"), "--domain-scale", "2",
                 "--elevation-range", "0", "20", "--no-view-dependent", "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["elevation_range"] == [0.0, 20.0] and shown["view_dependent"] is False and shown["domain_guidance_scale"] == 2.0
    assert main(["3d", "--prior", "p", "--prompt", "owl", "--out", str(tmp_path / "o"), "--domain-scale", "2"]) == 2
    assert "no --domain model" in capsys.readouterr().err and not (tmp_path / "o").exists()
