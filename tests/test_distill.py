"""Issue #28: guidance distillation. A student (the prior's UNet + a zero-initialised (w_d, w_c) embedding) learns the
teacher's Eq. A prediction and samples in one UNet call per step."""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image
from safetensors.torch import load_file

from indomain.distill import DistillConfig, distill
from indomain.guidance import combine
from indomain.nulltext import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.student import (StudentSettings, attach_weight_embedding, load_student, save_student,
                              teacher_prediction, use_student, weight_rows)
from indomain.testing import save_tiny_prior, tiny_unet
from indomain.train import list_checkpoints

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny prior, a null-text domain model of it (random weights), six domain images and a prompt file."""
    root = tmp_path_factory.mktemp("distill")
    prior = save_tiny_prior(root / "prior")
    pipe = InDomainPipeline.from_pretrained(prior)
    null = pipe.encode_text([""], torch.device("cpu"))
    domain = NullTextUNet.from_prior(tiny_unet(seed=3), null, scheduler=pipe.scheduler)
    domain.save_pretrained(root / "domain")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((36, 40, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n  \na green star\n")
    return {"prior": prior, "domain": root / "domain", "images": images, "prompts": prompts}


def config(world, out, **kw):
    base = dict(prior=str(world["prior"]), domain=str(world["domain"]), images=str(world["images"]),
                prompts=str(world["prompts"]), output=str(out), resolution=32, train_batch_size=2, max_train_steps=4,
                checkpointing_steps=2, learning_rate=1e-3, ema_decay=0.9, empty_prompt_share=0.3, num_teacher_paths=5,
                teacher_path_steps=3)
    base.update(kw)
    return DistillConfig(**base)


def settings(**kw):
    return StudentSettings(domain_guidance_scale_range=(1.0, 5.0), guidance_scale_range=(1.0, 6.0),
                           embedding={"num_frequencies": 8, "hidden_dim": 256}, **kw)


def test_untrained_student_equals_the_prior_exactly():
    prior = tiny_unet(seed=0)
    student = tiny_unet(seed=0)
    attach_weight_embedding(student)
    x, t, text = torch.randn(3, 4, 16, 16), torch.tensor([10, 500, 900]), torch.randn(3, 77, 32)
    w = weight_rows(torch.tensor([1.0, 2.5, 5.0]), torch.tensor([6.0, 1.0, 3.0]), 3, x)
    with torch.no_grad():
        a = prior(x, t, encoder_hidden_states=text).sample
        b = student(x, t, encoder_hidden_states=text, class_labels=w).sample
    assert torch.equal(a, b)
    # ... and the embedding does reach the output once its last layer is non-zero (the test can fail)
    torch.nn.init.normal_(student.class_embedding.linear_2.weight)
    with torch.no_grad():
        assert not torch.allclose(a, student(x, t, encoder_hidden_states=text, class_labels=w).sample)


def test_teacher_is_eq_a_with_each_rows_weights():
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([100, 700])
    text, null = torch.randn(2, 77, 32), torch.randn(1, 77, 32).expand(2, 77, 32)
    prior, domain = tiny_unet(seed=0), NullTextUNet.from_prior(tiny_unet(seed=3), null[:1])
    w_d, w_c = torch.tensor([1.5, 4.0]), torch.tensor([2.0, 0.5])
    with torch.no_grad():
        got = teacher_prediction(prior, domain, x, t, text, null, w_d, w_c)
        for i in range(2):  # row by row, with the combiner at scalar weights
            e_u = prior(x[i:i + 1], t[i:i + 1], encoder_hidden_states=null[i:i + 1]).sample
            e_d = domain(x[i:i + 1], t[i:i + 1], encoder_hidden_states=None).sample
            e_c = prior(x[i:i + 1], t[i:i + 1], encoder_hidden_states=text[i:i + 1]).sample
            want = combine(e_u, [e_d, e_c], [float(w_d[i]), float(w_c[i])])
            assert torch.allclose(got[i:i + 1], want, atol=1e-5)


@pytest.fixture
def student_pipe(world):
    pipe = InDomainPipeline.from_pretrained(world["prior"])
    unet = pipe.unet
    attach_weight_embedding(unet)
    torch.manual_seed(0)
    torch.nn.init.normal_(unet.class_embedding.linear_2.weight, std=0.05)  # a "trained" embedding
    use_student(pipe, unet, settings())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_calls(module):
    calls = []
    module.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


def test_one_unet_call_per_step_and_the_weights_reach_it(student_pipe):
    calls = count_calls(student_pipe.unet)
    kw = dict(prompt=["a cat", "a dog"], num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0))
    a = student_pipe(domain_guidance_scale=2.0, guidance_scale=3.0, **kw).images
    assert len(calls) == 3
    kw["generator"] = torch.Generator().manual_seed(0)
    b = student_pipe(domain_guidance_scale=4.0, guidance_scale=3.0, **kw).images
    assert not torch.allclose(a, b)
    kw["generator"] = torch.Generator().manual_seed(0)
    uncond = student_pipe(domain_guidance_scale=2.0, guidance_scale=3.0, num_images_per_prompt=2,
                          **{k: v for k, v in kw.items() if k != "prompt"}).images
    assert len(calls) == 9 and uncond.shape == a.shape


def test_per_call_work_is_done_once_and_the_result_is_unchanged(student_pipe):
    """With a prompt the student never reads ∅, so it is not encoded; the weight embedding runs once per call (a
    callback that changes the weights runs it again), and the result equals the embedding recomputed at every step."""
    text_calls, embedding_calls = count_calls(student_pipe.text_encoder), count_calls(student_pipe.unet.class_embedding.linear_1)

    def bump(pipe, i, t, kwargs):
        if i == 1:
            pipe._domain_guidance_scale = 3.0
        return kwargs

    kw = dict(prompt=["a cat", "a dog"], num_inference_steps=4, output_type="latent", domain_guidance_scale=2.0,
              guidance_scale=3.0, callback_on_step_end=bump)
    got = student_pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert len(text_calls) == 1 and len(embedding_calls) == 2
    student_pipe.unet.class_embedding._last = None
    original = type(student_pipe.unet.class_embedding).forward

    def uncached(self, weights):  # every step from scratch, as before the embedding kept its output
        self._last = None
        return original(self, weights)

    type(student_pipe.unet.class_embedding).forward = uncached
    try:
        want = student_pipe(generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        type(student_pipe.unet.class_embedding).forward = original
    assert len(embedding_calls) == 2 + 4 and torch.equal(got, want)


def test_weights_outside_the_trained_ranges_are_refused(student_pipe):
    kw = dict(num_inference_steps=2, output_type="latent")
    with pytest.raises(ValueError, match=r"domain_guidance_scale=6.*\[1, 5\]"):
        student_pipe(domain_guidance_scale=6.0, guidance_scale=2.0, **kw)
    with pytest.raises(ValueError, match=r"guidance_scale=0.5.*\[1, 6\]"):
        student_pipe(prompt="a cat", domain_guidance_scale=2.0, guidance_scale=0.5, **kw)
    with pytest.raises(ValueError, match="negative_prompt"):
        student_pipe(prompt="a cat", negative_prompt="blurry", **kw)

    def push(pipe, i, t, kwargs):  # a callback that moves w_d out of range mid-call
        pipe._domain_guidance_scale = 9.0
        return kwargs

    with pytest.raises(ValueError, match="domain_guidance_scale=9"):
        student_pipe(callback_on_step_end=push, **kw)


def test_student_accepts_a_controlnet(world, student_pipe):
    torch.manual_seed(1)
    net = ControlNetModel.from_unet(tiny_unet(seed=0), conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.normal_(0, 0.05)
    pipe = InDomainPipeline(**{k: v for k, v in student_pipe.components.items() if k != "controlnet"}, controlnet=net.eval())
    pipe.student = student_pipe.student
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    kw = dict(prompt="a cat", num_inference_steps=2, output_type="latent", domain_guidance_scale=2.0, guidance_scale=2.0)
    without = student_pipe(generator=torch.Generator().manual_seed(0), **kw).images
    calls, net_calls = count_calls(pipe.unet), count_calls(net)
    with_net = pipe(image=image, generator=torch.Generator().manual_seed(0), **kw).images
    assert len(calls) == 2 and len(net_calls) == 2
    assert not torch.allclose(with_net, without)  # the residuals reached the student
    zero = pipe(image=image, controlnet_conditioning_scale=0.0, generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.allclose(zero, without, atol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_student_folder_round_trip(world, tmp_path, lora):
    pipe = InDomainPipeline.from_pretrained(world["prior"])
    unet = pipe.unet
    extra = {}
    if lora:
        from indomain.train import TrainConfig, add_lora

        extra["lora"] = add_lora(unet, TrainConfig(prior="p", images="i", output="o", lora_rank=2))
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    attach_weight_embedding(unet)
    torch.nn.init.normal_(unet.class_embedding.linear_2.weight, std=0.05)
    save_student(unet, tmp_path / "s", settings(**extra))
    files = {p.name for p in (tmp_path / "s").iterdir()}
    assert files == ({"student_lora.safetensors"} if lora else {"config.json", "diffusion_pytorch_model.safetensors"}) | {
        "weight_embedding.safetensors", "student_config.json"}
    loaded, got = load_student(tmp_path / "s", InDomainPipeline.from_pretrained(world["prior"]).unet)
    assert got.domain_guidance_scale_range == (1.0, 5.0) and (got.lora is not None) == lora
    x, t, text = torch.randn(2, 4, 16, 16), torch.tensor([10, 800]), torch.randn(2, 77, 32)
    w = weight_rows(2.0, 3.0, 2, x)
    with torch.no_grad():
        assert torch.allclose(unet(x, t, encoder_hidden_states=text, class_labels=w).sample,
                              loaded(x, t, encoder_hidden_states=text, class_labels=w).sample, atol=1e-5)


def test_a_student_config_with_the_older_range_key_still_reads(tmp_path):
    import dataclasses

    from indomain.student import STUDENT_CONFIG, read_settings

    raw = dataclasses.asdict(settings())
    raw["domain_scale_range"] = raw.pop("domain_guidance_scale_range")  # as `indomain distill` wrote it before
    (tmp_path / STUDENT_CONFIG).write_text(json.dumps(raw))
    assert read_settings(tmp_path).domain_guidance_scale_range == (1.0, 5.0)


def test_distill_trains_saves_and_samples_in_one_call_per_step(world, tmp_path):
    out = distill(config(world, tmp_path / "run", validation_steps=4, validation_prompts=["a cat"],
                         num_validation_images=2, validation_inference_steps=2, domain_guidance_scale=2.0))
    saved = json.loads((out / "student_config.json").read_text())
    assert saved["domain_guidance_scale_range"] == [1.0, 5.0] and saved["guidance_scale_range"] == [1.0, 6.0]
    assert saved["teacher"]["num_prompts"] == 3 and saved["teacher"]["empty_prompt_share"] == 0.3
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["domain"] == str(world["domain"]) and recorded["prompts"] == str(world["prompts"])
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step0000004_prompt01.png", "step0000004_uncond.png"]
    trained = load_file(out / "weight_embedding.safetensors")["class_embedding.linear_2.weight"]
    assert trained.abs().max() > 0  # the zero-initialised layer learned something
    pipe = InDomainPipeline.from_pretrained(world["prior"], distilled=out)
    pipe.set_progress_bar_config(disable=True)
    calls = count_calls(pipe.unet)
    images = pipe("a cat", num_inference_steps=3, domain_guidance_scale=2.5, guidance_scale=2.5, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all() and len(calls) == 3


def test_kill_and_resume_equals_uninterrupted(world, tmp_path):
    full = distill(config(world, tmp_path / "full", max_train_steps=6))

    def crash(step):
        if step == 3:  # after checkpoint-2, before checkpoint-4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(config(world, tmp_path / "cut", max_train_steps=6), on_step=crash)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    resumed = distill(config(world, tmp_path / "cut", max_train_steps=6, resume="latest"))
    for folder in ["", "raw"]:
        for name in ["diffusion_pytorch_model.safetensors", "weight_embedding.safetensors"]:
            a, b = load_file(full / folder / name), load_file(resumed / folder / name)
            assert all(torch.equal(a[k], b[k]) for k in a), (folder, name)


def objective_built(world, tmp_path, **kw):
    from indomain.distill import DistillObjective
    from indomain.loading import load_prior_components

    cfg = config(world, tmp_path / "x", **kw)
    cfg.validate()  # as the training loop does: resolves --prompted-states auto
    objective = DistillObjective(cfg)
    objective.build(cfg, load_prior_components(cfg.prior), torch.device("cpu"))
    return objective


def test_teacher_paths_are_the_teachers_own_ddim_paths(world, tmp_path):
    from diffusers import DDIMScheduler

    obj = objective_built(world, tmp_path, num_teacher_paths=3, teacher_path_steps=4)
    paths = obj.paths
    assert paths["states"].shape == (3, 4, 4, 16, 16)  # 3 paths x 4 steps of 32 px latents (the tiny VAE: /2)
    sched = DDIMScheduler.from_config(obj.noise_scheduler.config)
    sched.set_timesteps(4)
    assert torch.equal(paths["timesteps"], sched.timesteps)
    assert ((paths["w_d"] >= 1) & (paths["w_d"] <= 5)).all() and ((paths["w_c"] >= 1) & (paths["w_c"] <= 6)).all()
    for j in range(3):  # each state is the teacher's DDIM step from the one before, at the path's prompt and weights
        for k in range(3):
            x, t = paths["states"][j:j + 1, k].float(), sched.timesteps[k]
            with torch.no_grad():
                eps = teacher_prediction(obj.prior, obj.domain, x, t.expand(1), obj.prompts[paths["prompt"][j:j + 1]],
                                         obj.null, paths["w_d"][j:j + 1], paths["w_c"][j:j + 1])
            assert torch.allclose(paths["states"][j, k + 1].float(), sched.step(eps, t, x).prev_sample, atol=2e-2)


@pytest.mark.parametrize("states", ["teacher-paths", "domain-images"])
def test_prompted_rows_start_where_asked(world, tmp_path, states):
    obj = objective_built(world, tmp_path, prompted_states=states, empty_prompt_share=0.0, num_teacher_paths=4,
                          teacher_path_steps=3)
    assert (obj.paths is not None) == (states == "teacher-paths")
    seen = []

    def student(x, t, **kwargs):  # stands in for the student UNet: records its inputs
        seen.append((x.clone(), t.clone()))
        return (torch.zeros_like(x),)

    latents, noise = torch.randn(6, 4, 16, 16), torch.randn(6, 4, 16, 16)
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    obj.loss(student, latents, noise, gens, None)
    (x, t), = seen
    if states == "domain-images":  # the domain images, noised
        assert torch.allclose(x, obj.noise_scheduler.add_noise(latents, noise, t))
        return
    states_, steps = obj.paths["states"].float(), obj.paths["timesteps"]
    for row, tt in zip(x, t):  # every prompted row is a state of some path, at that state's timestep
        hits = [(j, k) for j in range(states_.shape[0]) for k in range(states_.shape[1]) if torch.equal(row, states_[j, k])]
        assert hits and any(steps[k] == tt for _, k in hits)


@pytest.mark.parametrize("label", ["zero", "drawn"])
def test_empty_prompt_rows_get_their_own_weight_label(world, tmp_path, label):
    """--empty-prompt-label zero: an empty-prompt row's w_c reaches the embedding as 0 (its target has no control
    term), a prompted row's as drawn from the range; drawn: every row's from the range."""
    obj = objective_built(world, tmp_path, empty_prompt_share=0.5, empty_prompt_label=label, num_teacher_paths=4,
                          teacher_path_steps=3)
    seen = []

    def student(x, t, encoder_hidden_states, class_labels, **kwargs):
        seen.append((encoder_hidden_states.clone(), class_labels.clone()))
        return (torch.zeros_like(x),)

    latents, noise = torch.randn(8, 4, 16, 16), torch.randn(8, 4, 16, 16)
    obj.loss(student, latents, noise, [torch.Generator().manual_seed(i) for i in range(8)], None)
    (text, labels), = seen
    empty = torch.tensor([torch.equal(row, obj.null[0]) for row in text])
    assert 0 < int(empty.sum()) < 8  # both kinds of row in the batch
    in_range = (labels[:, 1] >= 1.0) & (labels[:, 1] <= 6.0)
    if label == "zero":
        assert torch.all(labels[empty, 1] == 0) and torch.all(in_range[~empty])
    else:
        assert torch.all(in_range)


@pytest.mark.parametrize("label", ["zero", "drawn"])
def test_sampling_without_a_prompt_gives_the_label_the_student_learned(world, label):
    pipe = InDomainPipeline.from_pretrained(world["prior"])
    attach_weight_embedding(pipe.unet)
    use_student(pipe, pipe.unet, settings(empty_prompt_label=label))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.unet.class_embedding.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    kw = dict(domain_guidance_scale=2.0, guidance_scale=3.0, num_inference_steps=2, output_type="latent")
    pipe(**kw, num_images_per_prompt=2)
    pipe(prompt=["a cat", "a dog"], **kw)
    no_prompt, prompted = seen[0], seen[-1]
    assert torch.all(no_prompt[:, 0] == 2.0) and torch.all(no_prompt[:, 1] == (0.0 if label == "zero" else 3.0))
    assert torch.all(prompted == torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize("teacher", [{"num_prompts": 0, "empty_prompt_share": 0.2},
                                     {"num_prompts": 3, "empty_prompt_share": 1.0}])
def test_an_unconditional_only_student_refuses_a_prompt_by_name(world, teacher):
    pipe = InDomainPipeline.from_pretrained(world["prior"])
    attach_weight_embedding(pipe.unet)
    use_student(pipe, pipe.unet, settings(teacher=teacher))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(domain_guidance_scale=2.0, num_inference_steps=1, output_type="latent")
    assert pipe(**kw).images.shape[0] == 1
    with pytest.raises(ValueError, match="trained without prompts"):
        pipe(prompt="a cat", **kw)


def test_resuming_with_other_prompted_states_is_refused_by_name(world, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        distill(config(world, tmp_path / "cut", prompted_states="domain-images"),
                on_step=lambda s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 3 else None)
    with pytest.raises(ValueError, match="was made with --prompted-states domain-images; this run has "
                                         "--prompted-states teacher-paths"):
        distill(config(world, tmp_path / "cut", resume="latest"))


def test_lora_student_resumes_and_is_small(world, tmp_path):
    full = distill(config(world, tmp_path / "full", lora_rank=2, max_train_steps=4))
    with pytest.raises(KeyboardInterrupt):
        distill(config(world, tmp_path / "cut", lora_rank=2, max_train_steps=4),
                on_step=lambda s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 3 else None)
    resumed = distill(config(world, tmp_path / "cut", lora_rank=2, max_train_steps=4, resume="latest"))
    a, b = load_file(full / "student_lora.safetensors"), load_file(resumed / "student_lora.safetensors")
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert not (full / "diffusion_pytorch_model.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    (dict(domain_guidance_scale_range=[5.0, 1.0]), "--domain-guidance-scale-range must be two finite numbers LO <= HI"),
    (dict(empty_prompt_share=1.5), r"--empty-prompt-share must be in \[0, 1\]"),
    (dict(prompts="missing.txt"), "--prompts 'missing.txt' is not a file"),
    (dict(domain="nowhere"), "--domain 'nowhere' is not a folder"),
    (dict(objective="consistency", prompted_states="teacher-paths"), "--prompted-states teacher-paths is for --objective guidance"),
    (dict(validation_steps=2, domain_guidance_scale=7.0), "--domain-guidance-scale 7.0 .* outside the trained range"),
])
def test_bad_settings_are_refused_before_anything_is_written(world, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        distill(config(world, tmp_path / "bad", **change))
    assert not (tmp_path / "bad").exists()


def test_cli_end_to_end(world, tmp_path, capsys):
    from indomain.cli import main

    run = lambda *a: main([str(v) for v in a])  # noqa: E731  (the `indomain` entry point, in process)
    out = tmp_path / "student"
    assert run("distill", "--prior", world["prior"], "--domain", world["domain"], "--images", world["images"],
               "--prompts", world["prompts"], "--output", out, "--resolution", 32, "--train-batch-size", 2,
               "--max-train-steps", 2, "--num-teacher-paths", 3, "--teacher-path-steps", 2,
               "--domain-scale-range", 1, 4, "--guidance-scale-range", 1, 5, "-q") == 0
    assert json.loads((out / "student_config.json").read_text())["guidance_scale_range"] == [1.0, 5.0]
    gen = tmp_path / "gen"
    assert run("generate", "--prior", world["prior"], "--distilled", out, "--prompt", "a cat", "--num-images", 1,
               "--steps", 2, "--domain-scale", 2, "--guidance-scale", 3, "--device", "cpu", "--out", gen, "-q") == 0
    assert (gen / "grid.png").is_file()
    record = json.loads((gen / "settings.json").read_text())
    assert record["settings"]["distilled"] == [str(out)] and record["resolved"]["student"]["domain_guidance_scale_range"] == [1, 4]
    capsys.readouterr()
    assert run("generate", "--prior", world["prior"], "--distilled", out, "--steps", 2, "--domain-scale", 4.5,
               "--device", "cpu", "--out", tmp_path / "gen2", "-q") == 2
    assert "error: domain_guidance_scale=4.5 is outside the range [1, 4]" in capsys.readouterr().err
    assert run("generate", "--prior", world["prior"], "--distilled", out, "--domain", world["domain"],
               "--out", tmp_path / "gen3", "-q") == 2
    assert "error: --distilled replaces --domain" in capsys.readouterr().err


def test_cli_options_and_dry_run(capsys):
    import dataclasses

    from indomain.cli import main
    from indomain.distill import OPTIONS

    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    # every option is a field; the fields left out are the ones that do not apply to a student
    assert set(OPTIONS) <= fields
    assert fields - set(OPTIONS) == {"baseline", "caption", "mode", "snr_gamma", "channels_last", "compile",
                                     "push_to_hub", "hub_model_id", "prior_config", "aspect_buckets"}
    argv = ["distill", "--prior", "p", "--domain", "d", "--images", "i", "--output", "o", "--dry-run",
            "--domain-scale-range", "0.5", "3", "--lora-rank", "4"]
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["domain_guidance_scale_range"] == [0.5, 3.0] and config["guidance_scale_range"] == [1.0, 6.0]
    assert config["learning_rate"] == 1e-4 and config["empty_prompt_share"] == 0.2


def test_consistency_student_trains_resumes_and_samples_with_lcm_in_few_calls(world, tmp_path):
    from diffusers import LCMScheduler

    kw = dict(objective="consistency", num_ddim_timesteps=50, max_train_steps=4)
    full = distill(config(world, tmp_path / "full", **kw))
    with pytest.raises(KeyboardInterrupt):
        distill(config(world, tmp_path / "cut", **kw),
                on_step=lambda s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 3 else None)
    resumed = distill(config(world, tmp_path / "cut", **kw, resume="latest"))
    a, b = load_file(full / "diffusion_pytorch_model.safetensors"), load_file(resumed / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((full / "student_config.json").read_text())
    assert saved["objective"] == "consistency" and saved["original_inference_steps"] == 50
    pipe = InDomainPipeline.from_pretrained(world["prior"], distilled=full)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.scheduler.config.original_inference_steps == 50
    pipe.set_progress_bar_config(disable=True)
    calls = count_calls(pipe.unet)
    images = pipe("a cat", num_inference_steps=4, domain_guidance_scale=2.0, guidance_scale=2.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert len(calls) == 4 and np.isfinite(images).all()


def test_the_weight_embedding_has_its_own_learning_rate(world, tmp_path):
    from indomain.distill import DistillObjective

    unet = tiny_unet(seed=0)
    attach_weight_embedding(unet)
    params = [p for p in unet.parameters() if p.requires_grad]
    groups = DistillObjective(config(world, tmp_path / "x", embedding_learning_rate=3e-3)).param_groups(unet, params)
    assert groups[1]["lr"] == 3e-3 and "lr" not in groups[0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in unet.class_embedding.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(params)


# ----------------------------------------------------------------------------------------------------
# A pair: a student distilled with prompts for calls with one, an unconditional-only student for calls without


PROMPTED = {"num_prompts": 3, "empty_prompt_share": 0.2}
UNCONDITIONAL = {"num_prompts": 0, "empty_prompt_share": 0.0}


def student_unet(world, seed, **kw):
    """A student UNet of the tiny prior whose weight embedding is not zero, so (w_d, w_c) change its output."""
    unet = InDomainPipeline.from_pretrained(world["prior"]).unet
    attach_weight_embedding(unet, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.normal_(unet.class_embedding.linear_2.weight, std=0.05)
    return unet, settings(**kw)


def sample(pipe, **kw):
    return pipe(domain_guidance_scale=2.0, guidance_scale=3.0, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kw).images


def test_a_pair_answers_each_kind_of_call_with_its_own_student(world):
    """A prompted call runs only the prompted student, a prompt-less call only the unconditional one, each as that
    student alone would; one call per step either way."""
    (a, sa), (b, sb) = student_unet(world, 1, teacher=PROMPTED), student_unet(world, 2, teacher=UNCONDITIONAL,
                                                                               empty_prompt_label="zero")
    pair = InDomainPipeline.from_pretrained(world["prior"])
    use_student(pair, b, sb, unconditional=a, unconditional_settings=sa)  # given the other way round: sorted by kind
    assert pair.unet is a and pair.unconditional_student is b
    alone = {}
    for name, (unet, its) in {"a": (a, sa), "b": (b, sb)}.items():
        alone[name] = InDomainPipeline.from_pretrained(world["prior"])
        use_student(alone[name], copy.deepcopy(unet), its)
    for pipe in (pair, *alone.values()):
        pipe.set_progress_bar_config(disable=True)
    calls_a, calls_b = count_calls(a), count_calls(b)
    assert torch.equal(sample(pair, prompt=["a cat", "a dog"]), sample(alone["a"], prompt=["a cat", "a dog"]))
    assert (len(calls_a), len(calls_b)) == (2, 0)
    assert torch.equal(sample(pair, num_images_per_prompt=2), sample(alone["b"], num_images_per_prompt=2))
    assert (len(calls_a), len(calls_b)) == (2, 2)
    assert not torch.equal(sample(alone["a"], num_images_per_prompt=2), sample(alone["b"], num_images_per_prompt=2))
    # an empty prompt is no prompt (Eq. A has no control term then): the unconditional student answers it
    assert torch.equal(sample(pair, prompt=["", " "]), sample(alone["b"], num_images_per_prompt=2))
    assert (len(calls_a), len(calls_b)) == (2, 4)


def test_an_empty_prompt_is_a_prompt_less_call_for_one_student(world):
    unet, its = student_unet(world, 1, teacher=PROMPTED, empty_prompt_label="zero")
    pipe = InDomainPipeline.from_pretrained(world["prior"])
    use_student(pipe, unet, its)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    unet.class_embedding.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    assert torch.equal(sample(pipe, prompt=""), sample(pipe))
    assert torch.all(seen[0][:, 1] == 0) and torch.all(seen[-1][:, 1] == 0)


@pytest.mark.parametrize("control", [False, True])
def test_a_batch_mixing_rows_with_and_without_a_prompt_sends_each_row_to_its_own_student(world, control):
    """One call of each student per step, on its own rows (with its rows' ControlNet residuals), each row as its
    student alone gives it."""
    (a, sa), (b, sb) = student_unet(world, 1, teacher=PROMPTED), student_unet(world, 2, teacher=UNCONDITIONAL,
                                                                               empty_prompt_label="zero")
    pair = InDomainPipeline.from_pretrained(world["prior"])
    use_student(pair, a, sa, unconditional=b, unconditional_settings=sb)
    alone = {name: InDomainPipeline.from_pretrained(world["prior"]) for name in "ab"}
    use_student(alone["a"], copy.deepcopy(a), sa)
    use_student(alone["b"], copy.deepcopy(b), sb)
    side = 32 // pair.vae_scale_factor
    latents = torch.randn(4, pair.unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    kw = dict(num_images_per_prompt=2, height=32, width=32)
    if control:
        torch.manual_seed(1)
        net = ControlNetModel.from_unet(tiny_unet(seed=0), conditioning_embedding_out_channels=(16, 32)).eval()
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                    p.normal_(0, 0.05)
        for pipe in (pair, *alone.values()):
            pipe.register_modules(controlnet=net)
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        kw["image"] = Image.fromarray(image)
    calls_a, calls_b = count_calls(a), count_calls(b)
    mixed = sample(pair, prompt=["a cat", ""], latents=latents, **kw)
    assert (len(calls_a), len(calls_b)) == (2, 2)
    assert torch.allclose(mixed[:2], sample(alone["a"], prompt="a cat", latents=latents[:2], **kw), atol=1e-5)
    assert torch.allclose(mixed[2:], sample(alone["b"], latents=latents[2:], **kw), atol=1e-5)


def test_one_student_gives_the_empty_rows_of_a_mixed_batch_the_label_of_no_prompt(world):
    unet, its = student_unet(world, 1, teacher=PROMPTED, empty_prompt_label="zero")
    pipe = InDomainPipeline.from_pretrained(world["prior"])
    use_student(pipe, unet, its)
    seen, calls = [], count_calls(unet)
    unet.class_embedding.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    sample(pipe, prompt=["a cat", " "])
    assert len(calls) == 2 and seen[0][:, 1].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("kinds, message", [((PROMPTED, PROMPTED), "neither was distilled without prompts"),
                                            ((UNCONDITIONAL, UNCONDITIONAL), "both were distilled without prompts"),
                                            ((PROMPTED, UNCONDITIONAL), "different schedulers")])
def test_students_that_do_not_pair_are_refused_by_name(world, tmp_path, kinds, message):
    folders = []
    for i, teacher in enumerate(kinds):
        extra = {"objective": "consistency", "original_inference_steps": 50} if message == "different schedulers" and i else {}
        unet, its = student_unet(world, i, teacher=teacher, **extra)
        folders.append(save_student(unet, tmp_path / f"s{i}", its))
    with pytest.raises(ValueError, match=message):
        InDomainPipeline.from_pretrained(world["prior"], distilled=folders)
    with pytest.raises(ValueError, match="takes one student folder, or two"):
        InDomainPipeline.from_pretrained(world["prior"], distilled=folders * 2)


def test_cli_takes_a_pair_of_students_and_records_both(world, tmp_path):
    from indomain.cli import main

    folders = []
    for i, teacher in enumerate((UNCONDITIONAL, PROMPTED)):
        unet, its = student_unet(world, i, teacher=teacher)
        folders.append(save_student(unet, tmp_path / f"s{i}", its))
    gen = tmp_path / "gen"
    assert main([str(v) for v in ("generate", "--prior", world["prior"], "--distilled", *folders, "--num-images", 1,
                                  "--steps", 2, "--domain-scale", 2, "--device", "cpu", "--out", gen, "-q")]) == 0
    resolved = json.loads((gen / "settings.json").read_text())["resolved"]
    assert resolved["student"]["teacher"] == PROMPTED and resolved["unconditional_student"]["teacher"] == UNCONDITIONAL
