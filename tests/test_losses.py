"""Hand-computed values and properties of the pure objectives in ``harness.core.losses``.

Every expected value is written out with ``math.log`` / ``math.exp`` on small literal
inputs so a reader can redo the arithmetic; the properties check what each paper's
objective must do (where its minimum lies, which way its gradients point, what is
detached).  Parity with TRL's implementations is in ``tests/test_trl_parity.py``.

    .venv/bin/pytest tests/test_losses.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.core.losses import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_odds_ratio_loss,
    sft_loss,
    simpo_loss,
)

LOG2 = math.log(2.0)


def t(*values: float, grad: bool = False) -> torch.Tensor:
    # float64 so hand arithmetic and the library agree to ~1e-15, not float32 rounding
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x): the scalar form of every logistic loss below."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0, atol=tol)


# --------------------------------------------------------------------------- SFT


def test_sft_is_negated_summed_logp_and_grad_raises_likelihood() -> None:
    logps = t(-2.0, -0.5, grad=True)
    loss = sft_loss(logps)
    close(loss, [2.0, 0.5])
    loss.sum().backward()
    # descending the loss moves log-probs up by exactly the gradient step
    close(logps.grad, [-1.0, -1.0])


# --------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_values_with_and_without_margin() -> None:
    chosen, rejected = t(1.0, -0.3), t(0.2, 0.4)
    # -log sigma(d) = log(1 + e^{-d}),  d = r_w - r_l - m
    close(bradley_terry_loss(chosen, rejected), [softplus(-(1.0 - 0.2)), softplus(-(-0.3 - 0.4))])
    close(bradley_terry_loss(chosen, rejected, margin=0.5), [softplus(-0.3), softplus(-(-0.7 - 0.5))])
    # Llama 2 style per-pair margins
    close(bradley_terry_loss(chosen, rejected, margin=t(1.0, 0.0)), [softplus(-(0.8 - 1.0)), softplus(0.7)])


def test_bradley_terry_properties() -> None:
    close(bradley_terry_loss(t(0.7), t(0.7)), [LOG2])
    # only the score difference matters
    a, b = t(1.3, -2.0), t(0.1, 0.5)
    torch.testing.assert_close(bradley_terry_loss(a + 5.0, b + 5.0), bradley_terry_loss(a, b))
    chosen, rejected = t(0.4, grad=True), t(0.9, grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    # d/dr_w = -sigma(-(r_w - r_l)) = -sigma(0.5)
    close(chosen.grad, [-sigmoid(0.5)])
    close(rejected.grad, [sigmoid(0.5)])


# --------------------------------------------------------------------------- DPO

# policy / reference summed log-probs shared by the DPO, IPO and cDPO tests:
# h = (pc - pr) - (rc - rr) = (-10 + 12) - (-11 + 11.5) = 2 - 0.5 = 1.5
PC, PR, RC, RR = -10.0, -12.0, -11.0, -11.5
H = 1.5


def test_dpo_hand_value_and_rewards() -> None:
    losses, r_w, r_l = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1)
    close(losses, [softplus(-0.1 * H)])  # -log sigma(0.15)
    close(r_w, [0.1 * (PC - RC)])  # 0.1 * 1.0
    close(r_l, [0.1 * (PR - RR)])  # 0.1 * -0.5


def test_dpo_is_log2_at_zero_margin_for_any_beta_and_smoothing() -> None:
    # the policy equals the reference (h = 0): sigma(0) = 1/2 whatever beta and epsilon
    for beta in (0.01, 0.1, 1.0):
        for eps in (0.0, 0.1, 0.4):
            losses, _, _ = dpo_loss(t(-3.0, -7.0), t(-4.0, -2.0), t(-3.0, -7.0), t(-4.0, -2.0), beta, eps)
            close(losses, [LOG2, LOG2])


def test_cdpo_hand_value_and_zero_smoothing_is_plain_dpo() -> None:
    eps, beta = 0.2, 0.1
    losses, _, _ = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=beta, label_smoothing=eps)
    # -(1-eps) log sigma(beta h) - eps log sigma(-beta h)
    close(losses, [(1 - eps) * softplus(-beta * H) + eps * softplus(beta * H)])
    plain, _, _ = dpo_loss(t(PC, -1.0), t(PR, -2.5), t(RC, -1.2), t(RR, -2.0), beta=0.3)
    smoothed0, _, _ = dpo_loss(t(PC, -1.0), t(PR, -2.5), t(RC, -1.2), t(RR, -2.0), beta=0.3, label_smoothing=0.0)
    torch.testing.assert_close(smoothed0, plain, rtol=0, atol=0)


def test_dpo_gradients_and_detached_rewards() -> None:
    pc, pr = t(PC, grad=True), t(PR, grad=True)
    rc, rr = t(RC, grad=True), t(RR, grad=True)
    losses, r_w, r_l = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert not r_w.requires_grad and not r_l.requires_grad
    losses.sum().backward()
    # dL/dpc = -beta * sigma(-beta h): raise the chosen, lower the rejected
    g = 0.1 * sigmoid(-0.1 * H)
    close(pc.grad, [-g])
    close(pr.grad, [g])
    assert pc.grad.item() < 0 < pr.grad.item()


def test_cdpo_has_a_finite_optimum() -> None:
    # plain DPO keeps pushing h up forever; cDPO's gradient vanishes at beta h = log((1-eps)/eps)
    eps, beta = 0.1, 0.5
    h_star = math.log((1 - eps) / eps) / beta
    for h, sign in ((h_star, 0), (h_star + 1.0, 1), (h_star - 1.0, -1)):
        pc = t(h, grad=True)
        losses, _, _ = dpo_loss(pc, t(0.0), t(0.0), t(0.0), beta=beta, label_smoothing=eps)
        losses.sum().backward()
        assert pc.grad is not None
        if sign == 0:
            assert abs(pc.grad.item()) < 1e-12
        else:
            assert math.copysign(1, pc.grad.item()) == sign


# --------------------------------------------------------------------------- IPO


def test_ipo_hand_value() -> None:
    losses, r_w, r_l = ipo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.1)
    close(losses, [(H - 1 / (2 * 0.1)) ** 2])  # (1.5 - 5)^2 = 12.25
    assert losses.item() == pytest.approx(12.25, abs=1e-12)
    close(r_w, [0.1 * (PC - RC)])
    close(r_l, [0.1 * (PR - RR)])
    assert not r_w.requires_grad


def test_ipo_regresses_margin_to_one_over_two_beta() -> None:
    beta = 0.25  # target h = 1 / (2 beta) = 2
    for h, expected_grad in ((2.0, 0.0), (3.0, 2 * (3.0 - 2.0)), (0.5, 2 * (0.5 - 2.0))):
        pc = t(h, grad=True)
        losses, _, _ = ipo_loss(pc, t(0.0), t(0.0), t(0.0), beta=beta)
        losses.sum().backward()
        # unlike DPO, past the target margin the gradient pulls the chosen log-prob back down
        close(pc.grad, [expected_grad])


# ------------------------------------------------------------------------- SimPO


def test_simpo_hand_value_and_rewards() -> None:
    # beta (c - r) - gamma = 2 * (-0.8 + 1.1) - 0.5 = 0.1
    losses, r_w, r_l = simpo_loss(t(-0.8), t(-1.1), beta=2.0, gamma=0.5)
    close(losses, [softplus(-(2.0 * 0.3 - 0.5))])
    close(r_w, [2.0 * -0.8])
    close(r_l, [2.0 * -1.1])
    smoothed, _, _ = simpo_loss(t(-0.8), t(-1.1), beta=2.0, gamma=0.5, label_smoothing=0.1)
    close(smoothed, [0.9 * softplus(-0.1) + 0.1 * softplus(0.1)])


def test_simpo_margin_and_gradients() -> None:
    # equal likelihoods still cost -log sigma(-gamma): gamma is a required reward margin
    losses, _, _ = simpo_loss(t(-1.0), t(-1.0), beta=2.5, gamma=1.2)
    close(losses, [softplus(1.2)])
    c, r = t(-0.8, grad=True), t(-1.1, grad=True)
    losses, r_w, r_l = simpo_loss(c, r, beta=2.0, gamma=0.5)
    assert not r_w.requires_grad and not r_l.requires_grad
    losses.sum().backward()
    close(c.grad, [-2.0 * sigmoid(-0.1)])
    close(r.grad, [2.0 * sigmoid(-0.1)])


# -------------------------------------------------------------------------- ORPO


def test_orpo_hand_value() -> None:
    c, r = -0.5, -1.2
    # log odds(p) = log p - log(1 - p), with log p the length-averaged log-prob
    log_odds = (c - math.log(1 - math.exp(c))) - (r - math.log(1 - math.exp(r)))
    losses, lor = orpo_odds_ratio_loss(t(c), t(r))
    close(losses, [softplus(-log_odds)])
    close(lor, [log_odds])
    assert log_odds > c - r > 0  # odds separate faster than probabilities
    assert not lor.requires_grad


def test_orpo_properties() -> None:
    losses, lor = orpo_odds_ratio_loss(t(-0.9, -3.0), t(-0.9, -3.0))
    close(losses, [LOG2, LOG2])
    close(lor, [0.0, 0.0])
    c, r = t(-0.5, grad=True), t(-1.2, grad=True)
    orpo_odds_ratio_loss(c, r)[0].sum().backward()
    assert c.grad is not None and r.grad is not None
    assert c.grad.item() < 0 < r.grad.item()


def test_orpo_is_stable_for_near_certain_replies() -> None:
    # a memorised reply has mean log-prob ~ -1e-8: 1 - exp(x) rounds to 0 in float32
    for x in (-1e-3, -1e-5, -1e-7, -1e-8, -3.0):
        c = torch.tensor([x], dtype=torch.float32, requires_grad=True)
        losses, _ = orpo_odds_ratio_loss(c, torch.tensor([-1.0]))
        exact, _ = orpo_odds_ratio_loss(torch.tensor([x], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64))
        losses.sum().backward()
        assert c.grad is not None and torch.isfinite(c.grad).all(), f"non-finite ORPO gradient at mean logp {x}"
        assert losses.item() == pytest.approx(exact.item(), rel=1e-5, abs=1e-12)


# --------------------------------------------------------------------------- KTO


def test_kto_hand_values_both_branches_with_weights() -> None:
    policy, ref = t(-3.0, -4.0), t(-3.5, -3.0)  # r = policy - ref = [0.5, -1.0]
    desirable = torch.tensor([True, False])
    losses, rewards = kto_loss(policy, ref, desirable, kl=t(0.2).squeeze(), beta=0.1,
                               desirable_weight=1.5, undesirable_weight=0.7)
    close(losses, [
        1.5 * (1 - sigmoid(0.1 * (0.5 - 0.2))),  # lambda_D (1 - sigma(beta (r - z0)))
        0.7 * (1 - sigmoid(0.1 * (0.2 - -1.0))),  # lambda_U (1 - sigma(beta (z0 - r)))
    ])
    close(rewards, [0.1 * 0.5, 0.1 * -1.0])
    assert not rewards.requires_grad


def test_kto_accepts_integer_labels_and_reference_point_moves_losses() -> None:
    policy, ref = t(-3.0, -4.0), t(-3.5, -3.0)
    as_bool, _ = kto_loss(policy, ref, torch.tensor([True, False]), t(0.2).squeeze())
    as_int, _ = kto_loss(policy, ref, torch.tensor([1, 0]), t(0.2).squeeze())
    torch.testing.assert_close(as_int, as_bool, rtol=0, atol=0)
    low, _ = kto_loss(policy, ref, torch.tensor([1, 0]), t(0.0).squeeze())
    high, _ = kto_loss(policy, ref, torch.tensor([1, 0]), t(2.0).squeeze())
    # a larger KL baseline makes a desirable reply harder to credit and an undesirable one easier
    assert high[0] > low[0] and high[1] < low[1]


def test_kto_gradients() -> None:
    policy = t(-3.0, -4.0, grad=True)
    losses, _ = kto_loss(policy, t(-3.5, -3.0), torch.tensor([True, False]), t(0.2).squeeze(), beta=0.1)
    losses.sum().backward()
    g_d = 0.1 * sigmoid(0.1 * 0.3) * (1 - sigmoid(0.1 * 0.3))
    g_u = 0.1 * sigmoid(0.1 * 1.2) * (1 - sigmoid(0.1 * 1.2))
    close(policy.grad, [-g_d, g_u])  # raise the desirable reply, lower the undesirable one


def test_kto_kl_estimate_value_clamp_and_no_grad() -> None:
    pk = t(-5.0, -6.0, -7.0, grad=True)
    rk = t(-5.5, -6.2, -6.9)
    z0 = kto_kl_estimate(pk, rk)
    close(z0, (0.5 + 0.2 - 0.1) / 3)  # mean of [0.5, 0.2, -0.1]
    assert not z0.requires_grad
    # a negative mean is clamped: KL is never below 0
    close(kto_kl_estimate(t(-6.0, -6.0), t(-5.0, -5.5)), 0.0)
    # gradient through the loss reaches the matched log-probs only, never the KL pairs
    policy = t(-3.0, -4.0, grad=True)
    losses, _ = kto_loss(policy, t(-3.5, -3.0), torch.tensor([True, False]), z0)
    losses.sum().backward()
    assert pk.grad is None and policy.grad is not None


# --------------------------------------------------------------------------- CPO


def test_cpo_hand_value_and_rewards() -> None:
    losses, r_w, r_l = cpo_loss(t(-10.0), t(-12.0), beta=0.1)
    close(losses, [softplus(-0.1 * 2.0)])  # -log sigma(0.2)
    close(r_w, [-1.0])
    close(r_l, [-1.2])
    assert not r_w.requires_grad


def test_cpo_is_dpo_with_uniform_reference_and_simpo_without_margin() -> None:
    c, r = t(-10.0, -3.3, -7.0), t(-12.0, -2.9, -7.0)
    cpo, _, _ = cpo_loss(c, r, beta=0.3)
    dpo, _, _ = dpo_loss(c, r, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), beta=0.3)
    simpo, _, _ = simpo_loss(c, r, beta=0.3, gamma=0.0)
    torch.testing.assert_close(cpo, dpo, rtol=0, atol=1e-15)
    torch.testing.assert_close(cpo, simpo, rtol=0, atol=1e-15)
    c.requires_grad_(True)
    cpo_loss(c, r, beta=0.3)[0].sum().backward()
    assert c.grad is not None and (c.grad < 0).all()


@pytest.mark.parametrize("fn, n_inputs", [
    (dpo_loss, 4), (ipo_loss, 4), (simpo_loss, 2), (cpo_loss, 2), (orpo_odds_ratio_loss, 2),
])
def test_pairwise_losses_are_per_example(fn, n_inputs: int) -> None:
    # [B] in, [B] out: the adapters, not the losses, decide how to reduce
    inputs = [-torch.rand(5, dtype=torch.float64) - 0.1 for _ in range(n_inputs)]
    out = fn(*inputs)
    assert all(o.shape == (5,) for o in out)
    rows = [fn(*[x[i:i + 1] for x in inputs])[0] for i in range(5)]
    torch.testing.assert_close(out[0], torch.cat(rows), rtol=0, atol=1e-15)
