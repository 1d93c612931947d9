import math

import pytest
import torch

from indomain.guidance import Branch, Guidance, GuidancePlan, MultiGuidance, cfg, combine, decoupled, gcfg, rectified


class Linear:
    """An analytic noise predictor eps(x, t, c) = a*x + c (c broadcast), counting its calls and batch sizes."""

    def __init__(self, a: float):
        self.a, self.calls = a, []

    def __call__(self, x, t, cond):
        self.calls.append(x.shape[0])
        return self.a * x + (0.0 if cond is None else cond)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_combine_matches_equation_and_gcfg_form():
    u, e1, e2 = rand(2, 3, seed=1), rand(2, 3, seed=2), rand(2, 3, seed=3)
    got = combine(u, [e1, e2], [2.0, -0.5])
    torch.testing.assert_close(got, u + 2.0 * (e1 - u) - 0.5 * (e2 - u))
    torch.testing.assert_close(got, (1 - 1.5) * u + 2.0 * e1 - 0.5 * e2)


def test_cfg_preset_is_standard_cfg_bitwise():
    x, c, null = rand(2, 4), rand(2, 4, seed=5), rand(2, 4, seed=6)
    model = Linear(0.7)
    out = MultiGuidance({"prior": model}, cfg(7.5, c, null))(x, torch.tensor(10))
    u, k = model(x, None, null), model(x, None, c)
    assert torch.equal(out.pred, u + 7.5 * (k - u))
    assert model.calls[0] == 4  # uncond and cond in one batched call


def test_rectified_takes_uncond_from_prior_and_cond_from_finetuned():
    x, c, null = rand(2, 4), rand(2, 4, seed=5), rand(2, 4, seed=6)
    prior, tuned = Linear(0.5), Linear(2.0)
    out = MultiGuidance({"prior": prior, "finetuned": tuned}, rectified(3.0, c, null))(x, torch.tensor(1))
    u = 0.5 * x + null
    assert torch.equal(out.eps_u, u)
    torch.testing.assert_close(out.pred, u + 3.0 * ((2.0 * x + c) - u))


def test_decoupled_preset_is_paper_eq_a():
    x, c, null = rand(3, 4), rand(3, 4, seed=5), rand(3, 4, seed=6)
    prior, domain = Linear(0.5), Linear(-1.0)
    plan = decoupled(2.5, 1.5, c, null)
    out = MultiGuidance({"prior": prior, "domain": domain}, plan)(x, torch.tensor(1))
    u, d, k = 0.5 * x + null, -1.0 * x, 0.5 * x + c
    torch.testing.assert_close(out.pred, u + 2.5 * (d - u) + 1.5 * (k - u))
    assert prior.calls == [6] and domain.calls == [3]  # 2 calls per step: batched prior + domain


def test_gcfg_with_negative_weight():
    x, null = rand(1, 4), rand(1, 4, seed=1)
    conds = [rand(1, 4, seed=s) for s in (2, 3, 4)]
    w = [7.5, -2.0, 0.5]
    prior = Linear(0.3)
    out = MultiGuidance({"prior": prior}, gcfg(conds, w, null))(x, torch.tensor(0))
    expect = (1 - sum(w)) * (0.3 * x + null) + sum(wi * (0.3 * x + c) for wi, c in zip(w, conds))
    torch.testing.assert_close(out.pred, expect)
    assert prior.calls == [4]


def test_single_term_weight_one_skips_uncond_and_is_exact():
    x = rand(2, 4)
    prior, domain = Linear(0.5), Linear(-1.0)
    out = MultiGuidance({"prior": prior, "domain": domain}, decoupled(1.0, 0.0, None, rand(2, 4)))(x, torch.tensor(1))
    assert out.eps_u is None and prior.calls == []
    assert torch.equal(out.pred, domain(x, None, None))


def test_zero_weight_terms_are_not_evaluated():
    prior, domain = Linear(0.5), Linear(-1.0)
    MultiGuidance({"prior": prior, "domain": domain}, decoupled(0.0, 3.0, rand(1, 4), rand(1, 4)))(rand(1, 4), 0)
    assert domain.calls == []


def test_active_interval_follows_diffusers_rule():
    term = Guidance("prior", None, 1.0, start=0.2, stop=0.55)
    # diffusers ControlNet: active iff i/N >= start and (i+1)/N <= stop
    assert [term.active(i, 10) for i in range(10)] == [i / 10 >= 0.2 and (i + 1) / 10 <= 0.55 for i in range(10)]
    x, null = rand(1, 4), rand(1, 4, seed=1)
    prior = Linear(1.0)
    plan = GuidancePlan(Branch("prior", null), (Guidance("prior", rand(1, 4, seed=2), 5.0, 0.5, 1.0),))
    assert torch.equal(MultiGuidance({"prior": prior}, plan)(x, 0, step=0, num_steps=10).pred, x + null)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_refused(bad):
    with pytest.raises(ValueError, match="finite"):
        Guidance("domain", None, bad)


def test_bad_interval_and_unknown_model_are_refused():
    with pytest.raises(ValueError, match="start < stop"):
        Guidance("prior", None, 1.0, start=0.8, stop=0.2)
    with pytest.raises(ValueError, match="domain"):
        MultiGuidance({"prior": Linear(1.0)}, decoupled(2.0, 0.0, None, None))


def test_mixed_prediction_types_are_refused():
    with pytest.raises(ValueError, match="different types"):
        MultiGuidance(
            {"prior": Linear(1), "domain": Linear(1)},
            decoupled(2.0, 0.0, None, None),
            prediction_types={"prior": "epsilon", "domain": "v_prediction"},
        )


def test_combining_in_eps_or_v_space_gives_the_same_x0():
    """The module docstring's claim: an affine combination commutes with eps <-> v conversion."""
    a_bar = torch.tensor(0.3)
    alpha, sigma = a_bar.sqrt(), (1 - a_bar).sqrt()
    x_t = rand(2, 4)
    eps = [rand(2, 4, seed=s) for s in (1, 2, 3)]
    to_v = lambda e: alpha * e - sigma * (x_t - sigma * e) / alpha  # v = alpha*eps - sigma*x0
    x0_from_eps = lambda e: (x_t - sigma * e) / alpha
    x0_from_v = lambda v: alpha * x_t - sigma * v
    w = [2.5, -1.0]
    e_mix = combine(eps[0], eps[1:], w)
    v_mix = combine(to_v(eps[0]), [to_v(e) for e in eps[1:]], w)
    torch.testing.assert_close(x0_from_eps(e_mix), x0_from_v(v_mix), rtol=1e-5, atol=1e-5)


def test_dict_conditions_batch_per_key():
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return x * cond["scale"] + cond["shift"]

    x = rand(2, 3)
    null = {"scale": torch.ones(2, 1), "shift": torch.zeros(2, 3)}
    c = {"scale": 2 * torch.ones(2, 1), "shift": torch.ones(2, 3)}
    out = MultiGuidance({"prior": model}, cfg(2.0, c, null))(x, 0)
    torch.testing.assert_close(out.pred, x + 2.0 * ((2 * x + 1) - x))
    assert calls == [4]


def test_domain_text_preset_measures_the_control_term_in_the_domain():
    # eps_p(∅) + w_d (eps_dt(∅) − eps_p(∅)) + w_c (eps_dt(c) − eps_dt(∅)), one batched call per model
    from indomain.guidance import domain_text

    x, c, null = rand(3, 4), rand(3, 4, seed=5), rand(3, 4, seed=6)
    prior, dt = Linear(0.5), Linear(-1.0)
    out = MultiGuidance({"prior": prior, "domain_text": dt}, domain_text(2.5, 1.5, c, null))(x, torch.tensor(1))
    u, dn, dc = 0.5 * x + null, -1.0 * x + null, -1.0 * x + c
    torch.testing.assert_close(out.pred, u + 2.5 * (dn - u) + 1.5 * (dc - dn))
    assert prior.calls == [3] and dt.calls == [6]  # dt(∅) computed once for its two terms, batched with dt(c)
    # where the domain-text model is the prior itself, it is exactly Eq. A with the prior as the domain: CFG at w_c
    same = Linear(0.5)
    out = MultiGuidance({"prior": same, "domain_text": same}, domain_text(2.5, 1.5, c, null))(x, torch.tensor(1))
    torch.testing.assert_close(out.pred, u + 1.5 * ((0.5 * x + c) - u))
    # and it is not Eq. A: the control term's reference is dt(∅), not the prior's ∅
    eq_a = MultiGuidance({"prior": prior, "domain": dt, "control": dt},
                         decoupled(2.5, 1.5, c, null, control="control"))(x, torch.tensor(1))
    assert not torch.allclose(eq_a.pred, MultiGuidance({"prior": prior, "domain_text": dt},
                                                       domain_text(2.5, 1.5, c, null))(x, torch.tensor(1)).pred)


def test_domain_text_windows_keep_the_equation_per_step():
    from indomain.guidance import domain_text

    x, c, null = rand(2, 4), rand(2, 4, seed=5), rand(2, 4, seed=6)
    prior, dt = Linear(0.5), Linear(-1.0)
    plan = domain_text(2.0, 3.0, c, null, control_window=(0.0, 0.5))
    u, dn, dc = 0.5 * x + null, -1.0 * x + null, -1.0 * x + c
    early = MultiGuidance({"prior": prior, "domain_text": dt}, plan)(x, torch.tensor(1), step=0, num_steps=4)
    late = MultiGuidance({"prior": prior, "domain_text": dt}, plan)(x, torch.tensor(1), step=3, num_steps=4)
    torch.testing.assert_close(early.pred, u + 2.0 * (dn - u) + 3.0 * (dc - dn))
    torch.testing.assert_close(late.pred, u + 2.0 * (dn - u))  # control off: the domain term alone


def test_lowpass_keeps_constants_and_the_mean_and_scales_with_the_side():
    from indomain.guidance import lowpass

    const = torch.full((2, 4, 8, 8), 3.0)
    torch.testing.assert_close(lowpass(const, 0.2), const)
    x = rand(1, 1, 16, 16)
    y = lowpass(x, 0.2)
    assert y.shape == x.shape and y.std() < 0.5 * x.std()  # the high band is gone
    # the same fraction of the side is the same blur: a 2x-upsampled field, low-passed, is the low-passed field upsampled
    small, big = lowpass(x, 0.2), lowpass(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"), 0.2)
    assert (torch.nn.functional.avg_pool2d(big, 2) - small).abs().mean() < 0.1 * small.abs().mean()
    with pytest.raises(ValueError, match="lowpass"):
        Guidance("prior", None, 1.0, lowpass=0.0)


def test_domain_text_bands_splits_the_control_term_and_reduces_to_domain_text():
    # eps_p(∅) + w_d (dt(∅) − eps_p(∅)) + w_l G(q) + w_c (q − G(q)), q = dt(c) − dt(∅)
    from indomain.guidance import domain_text, domain_text_bands, lowpass

    class Field(Linear):  # eps = a x + c on (B, C, H, W) fields
        pass

    x, c, null = rand(2, 4, 8, 8), rand(2, 4, 8, 8, seed=5), rand(2, 4, 8, 8, seed=6)
    prior, dt = Field(0.5), Field(-1.0)
    out = MultiGuidance({"prior": prior, "domain_text": dt},
                        domain_text_bands(4.0, 6.0, 1.0, c, null, 0.2))(x, torch.tensor(1))
    u, dn, dc = 0.5 * x + null, -1.0 * x + null, -1.0 * x + c
    q = dc - dn
    torch.testing.assert_close(out.pred, u + 4.0 * (dn - u) + 1.0 * lowpass(q, 0.2) + 6.0 * (q - lowpass(q, 0.2)))
    assert prior.calls == [2] and dt.calls == [4]  # still one call per model: dt(∅) and dt(c) computed once each
    # w_l = w_c is domain-text itself; without a prompt, the unconditional form
    for cond in (c, None):
        ref = MultiGuidance({"prior": prior, "domain_text": dt}, domain_text(4.0, 6.0, cond, null))(x, torch.tensor(1))
        got = MultiGuidance({"prior": prior, "domain_text": dt},
                            domain_text_bands(4.0, 6.0, 6.0 if cond is not None else 1.0, cond, null))(x, torch.tensor(1))
        torch.testing.assert_close(got.pred, ref.pred)
    # the bands change the result where the prompt's term has a low band
    assert not torch.allclose(out.pred, MultiGuidance({"prior": prior, "domain_text": dt},
                                                      domain_text(4.0, 6.0, c, null))(x, torch.tensor(1)).pred)
