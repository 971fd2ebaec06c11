"""Hand-computed values, padding invariance and TRL 1.16 parity of ``harness.core.online_losses``
(and the judge-score parser in ``harness.core.judging``).

Expected numbers are written out from the papers' formulas on literal inputs (or from a
plain loop that implements the formula differently from the library, e.g. GAE as the
explicit discounted sum instead of the backward recursion), in float64.

The TRL checks build the real ``GRPOTrainer`` / ``RLOOTrainer`` on a 1-layer Llama (vocab
64) with a WordLevel tokenizer made in memory and a plain Python reward function, then:

- call ``_compute_loss`` on a hand-built inputs dict (every GRPO ``loss_type`` we cover),
  comparing the loss and the gradient with ours on per-token log-probs from the same weights;
- call ``_generate_and_score_completions`` (a few sampled tokens on CPU) and compare its
  advantages (GRPO: group / no std scaling; RLOO: leave-one-out on KL-penalised rewards),
  then feed its output to ``_compute_loss``.

    pytest -q tests/test_online_losses.py
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.core.judging import self_reward_score
from harness.core.online_losses import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_tokens,
    gae,
    grpo_advantages,
    grpo_loss,
    k3_kl,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    masked_var,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    slic_loss,
    spin_loss,
    whiten,
)

HAS_TRL = importlib.util.find_spec("trl") is not None
needs_trl = pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (test-only dependency)")

NAN = float("nan")
INF = float("inf")


def t(rows: Any, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def close(actual: torch.Tensor, expected: Any, tol: float = 1e-12) -> None:
    exp = expected if isinstance(expected, torch.Tensor) else torch.tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, exp.to(actual.dtype), rtol=0, atol=tol)


def k3(r: float) -> float:
    """exp(r) - r - 1 for r = log pi_ref - log pi_theta."""
    return math.exp(r) - r - 1


# mask of the [2, 3] examples below: row 0 has 3 completion tokens, row 1 has 2 (+1 padding)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


# --------------------------------------------------------------------------- masked statistics


def test_masked_sum_mean_var_ignore_padding_even_when_inf_or_nan() -> None:
    x = t([[1.0, 2.0, INF], [4.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float32)  # a float mask works too
    close(masked_sum(x, mask), 7.0)
    close(masked_sum(x, mask, dim=-1), [3.0, 4.0])
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(masked_mean(x, mask), 7.0 / 3)
    # {1, 2, 4}: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    close(masked_var(x, mask), 42 / 9 / 2)
    close(masked_var(x, mask, unbiased=False), 42 / 9 / 3)
    # an all-padding row has mean 0, not nan
    close(masked_mean(x, torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=-1), [1.5, 0.0])
    with pytest.raises(ValueError):
        masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_whiten_hand_values_shift_mean_and_padding() -> None:
    x = t([[1.0, 2.0, 3.0], [6.0, NAN, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # {1, 2, 3, 6}: mean 3, unbiased variance (4 + 1 + 0 + 9) / 3
    sd = math.sqrt(14 / 3 + 1e-8)
    close(whiten(x, mask), [[-2 / sd, -1 / sd, 0.0], [3 / sd, 0.0, 0.0]])
    close(whiten(x, mask, shift_mean=False), [[3 - 2 / sd, 3 - 1 / sd, 3.0], [3 + 3 / sd, 0.0, 0.0]])
    # no mask: every element counts
    y = t([1.0, 3.0])
    close(whiten(y, eps=0.0), [-1 / math.sqrt(2), 1 / math.sqrt(2)])
    # the gradient never sees the padding's nan
    xg = t([[1.0, 2.0, 3.0], [6.0, NAN, INF]], grad=True)
    whiten(xg, mask).pow(2).sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[1, 1:] == 0).all()


# --------------------------------------------------------------------------- KL


def test_k3_hand_values_nonnegative_and_unbiased() -> None:
    logp = t([math.log(0.5), math.log(0.25), -1.0])
    ref = t([math.log(0.25), math.log(0.5), -1.0])
    close(k3_kl(logp, ref), [k3(math.log(0.5)), k3(math.log(2.0)), 0.0])
    assert (k3_kl(t([-3.0, -0.1, -2.0]), t([-0.2, -4.0, -2.0])) >= 0).all()
    # unbiased: E_{y ~ p}[k3] = KL(p || q) exactly for a categorical p, q
    p = t([0.5, 0.3, 0.2])
    q = t([0.2, 0.2, 0.6])
    kl_exact = (p * (p / q).log()).sum()
    close((p * k3_kl(p.log(), q.log())).sum(), kl_exact)


def test_kl_penalized_rewards_k1_and_k3() -> None:
    logp = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, -INF]])
    ref = t([[-1.5, -1.0, -0.5], [-0.1, -1.7, NAN]])
    scores = t([1.0, 2.0])
    rewards, kl = kl_penalized_rewards(scores, logp, ref, MASK, kl_coef=0.1, estimator="k1")
    close(kl, [[0.5, -1.0, 0.0], [-0.2, 0.5, 0.0]])
    # -0.1 * kl everywhere, the score added on the last completion token (t=2 and t=1)
    close(rewards, [[-0.05, 0.1, 1.0], [0.02, 1.95, 0.0]])
    rewards, kl = kl_penalized_rewards(scores, logp, ref, MASK, kl_coef=0.1, estimator="k3")
    k = [[k3(-0.5), k3(1.0), 0.0], [k3(0.2), k3(-0.5), 0.0]]
    close(kl, k)
    close(rewards, [[-0.1 * k[0][0], -0.1 * k[0][1], 1.0], [-0.1 * k[1][0], 2.0 - 0.1 * k[1][1], 0.0]])
    # sum over tokens = the sequence reward r - beta * KL; an empty row gets nothing
    rewards, kl = kl_penalized_rewards(scores, logp, ref, torch.tensor([[1, 1, 1], [0, 0, 0]]), 0.1)
    close(rewards.sum(-1), [1.0 - 0.1 * (0.5 - 1.0), 0.0])
    with pytest.raises(ValueError):
        kl_penalized_rewards(scores, logp, ref, MASK, 0.1, estimator="k2")


def test_kl_controllers_follow_the_proportional_rule_and_resume() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # 9/6 - 1 = 0.5, clipped to 0.2
    b1 = 0.1 * (1 + 0.2 * 256 / 10000)
    assert ctl.value == pytest.approx(b1, abs=1e-15)
    ctl.update(current_kl=3.0, n_steps=256)  # -0.5 clipped to -0.2
    b2 = b1 * (1 - 0.2 * 256 / 10000)
    assert ctl.value == pytest.approx(b2, abs=1e-15)
    state = ctl.state_dict()
    ctl.update(current_kl=6.6, n_steps=512)  # 0.1, inside the clip range
    b3 = b2 * (1 + 0.1 * 512 / 10000)
    assert ctl.value == pytest.approx(b3, abs=1e-15)
    resumed = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1.0)
    resumed.load_state_dict(state)
    resumed.update(current_kl=6.6, n_steps=512)
    assert resumed.value == pytest.approx(b3, abs=1e-15)

    fixed = FixedKLController(0.05)
    fixed.update(100.0, 512)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


# --------------------------------------------------------------------------- PPO


def test_gae_three_tokens_by_hand_and_padding() -> None:
    gamma, lam = 0.9, 0.8
    # delta_2 = 1.0 - 0.3 = 0.7 (no bootstrap after the last token)
    # delta_1 = -0.2 + 0.9 * 0.3 - 0.4 = -0.33
    # delta_0 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04
    # A_2 = 0.7; A_1 = -0.33 + 0.72 * 0.7 = 0.174; A_0 = -0.04 + 0.72 * 0.174 = 0.08528
    rewards = t([[0.1, -0.2, 1.0, 5.0, NAN], [2.0, 7.0, 7.0, 7.0, 7.0]])
    values = t([[0.5, 0.4, 0.3, 9.0, INF], [1.5, 9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    close(adv, [[0.08528, 0.174, 0.7, 0, 0], [0.5, 0, 0, 0, 0]], tol=1e-12)
    close(ret, [[0.58528, 0.574, 1.0, 0, 0], [2.0, 0, 0, 0, 0]], tol=1e-12)


def test_gae_matches_the_explicit_discounted_sum() -> None:
    g = torch.Generator().manual_seed(0)
    gamma, lam, T = 0.95, 0.7, 6
    lengths = [6, 4, 1, 3]
    rewards = torch.randn(4, T, generator=g, dtype=torch.float64)
    values = torch.randn(4, T, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        r, v = rewards[b, :n].tolist(), values[b, :n].tolist() + [0.0]  # V = 0 after the end
        delta = [r[i] + gamma * v[i + 1] - v[i] for i in range(n)]
        for i in range(n):
            expected = sum((gamma * lam) ** j * delta[i + j] for j in range(n - i))
            assert adv[b, i].item() == pytest.approx(expected, abs=1e-12)
            assert ret[b, i].item() == pytest.approx(expected + v[i], abs=1e-12)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()
    # gamma = lam = 1: the return is the plain sum of the remaining rewards
    _, ret1 = gae(rewards, values, mask, 1.0, 1.0)
    close(ret1[0], rewards[0].flip(0).cumsum(0).flip(0), tol=1e-12)


def test_ppo_policy_loss_clips_only_where_the_ratio_leaves_the_trust_region() -> None:
    ratios = [[1.5, 0.5, 1.1], [0.7, 1.5, 1.0]]
    adv = t([[1.0, 1.0, -1.0], [-1.0, -1.0, NAN]])
    old = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
    logp = (old.detach() + t(ratios).log()).clone()
    logp[1, 2] = NAN  # padding
    logp.requires_grad_(True)
    loss, clipped, approx_kl = ppo_policy_loss(logp, old, adv, MASK, clip_eps=0.2)
    # rho=1.5, A=+1: min(1.5, 1.2) -> clipped; rho=0.5, A=+1: min(0.5, 0.8) = 0.5 -> not clipped
    # rho=1.1, A=-1: inside; rho=0.7, A=-1: min(-0.7, -0.8) -> clipped; rho=1.5, A=-1: -1.5 not clipped
    close(loss, [[-1.2, -0.5, 1.1], [0.8, 1.5, 0.0]])
    close(clipped, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    close(approx_kl, [[0.5 * math.log(r) ** 2 for r in ratios[0]], [0.5 * math.log(0.7) ** 2, 0.5 * math.log(1.5) ** 2, 0]])
    loss.sum().backward()
    # d/dlogp of -A * rho = -A * rho where unclipped; 0 where clipped and at padding
    close(logp.grad, [[0.0, -0.5, 1.1], [0.0, 1.5, 0.0]])


def test_ppo_policy_loss_asymmetric_clip_bounds() -> None:
    ratios = t([[1.25, 0.75, 1.3]])
    adv = t([[1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, clipped, _ = ppo_policy_loss(ratios.log(), torch.zeros(1, 3, dtype=torch.float64), adv, mask,
                                       clip_eps=0.2, clip_eps_high=0.28)
    # upper bound 1.28: 1.25 stays, 1.3 is clipped to 1.28; lower bound 0.8: 0.75 -> 0.8
    close(loss, [[-1.25, 0.8, -1.28]])
    close(clipped, [[0.0, 1.0, 1.0]])
    # a sequence-level advantage [B] broadcasts over tokens
    loss_b, _, _ = ppo_policy_loss(ratios.log(), torch.zeros(1, 3, dtype=torch.float64), t([1.0]), mask, 0.2)
    close(loss_b, [[-1.2, -0.75, -1.2]])


def test_ppo_value_loss_takes_the_larger_of_clipped_and_unclipped_error() -> None:
    values = t([[1.0, 2.0, 3.0], [-1.0, 0.0, NAN]], grad=True)
    old = t([[0.0, 1.9, 1.0], [0.0, 0.0, 0.0]])
    returns = t([[0.0, 3.0, 3.0], [-1.0, 0.5, INF]])
    loss, clipped = ppo_value_loss(values, old, returns, MASK, clip_value=0.2)
    # (1) v=1, clipped to 0.2: errors 1 vs 0.04 -> 0.5 * 1
    # (2) v=2 within 0.2 of 1.9: errors 1 and 1 -> 0.5
    # (3) v=3 clipped to 1.2: errors 0 vs 3.24 -> 1.62, clipped branch
    # (4) v=-1 clipped to -0.2: errors 0 vs 0.64 -> 0.32, clipped branch
    # (5) v=0=old: 0.5 * 0.25
    close(loss, [[0.5, 0.5, 1.62], [0.32, 0.125, 0.0]])
    close(clipped, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    loss.sum().backward()
    # gradient (v - R) where unclipped, 0 where the clipped error wins (it is constant in v)
    close(values.grad, [[1.0, -1.0, 0.0], [0.0, -0.5, 0.0]])


# --------------------------------------------------------------------------- group baselines


def test_grpo_advantages_group_normalised_and_dr_grpo() -> None:
    rewards = t([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    sd = math.sqrt(4 * 0.25 / 3)  # unbiased std of {1, 0, 0, 1}
    a = 0.5 / (sd + 1e-4)
    close(grpo_advantages(rewards, 4), [a, -a, -a, a, 0, 0, 0, 0])
    close(grpo_advantages(rewards, 4, scale_by_std=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    # {0, 1, 5}: mean 2, unbiased std sqrt((4 + 1 + 9) / 2) = sqrt(7); eps = 0
    close(grpo_advantages(t([0.0, 1.0, 5.0]), 3, eps=0.0), [-2 / math.sqrt(7), -1 / math.sqrt(7), 3 / math.sqrt(7)])
    close(grpo_advantages(t([3.0, 4.0]), 1), [0.0, 0.0])
    with pytest.raises(ValueError):
        grpo_advantages(t([1.0, 2.0, 3.0]), 2)


def test_rloo_advantages_leave_one_out() -> None:
    rewards = t([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    # group 1: 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2; group 2: 0 - 3, 0 - 3, 6 - 0
    close(rloo_advantages(rewards, 3), [-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    # the same as k/(k-1) times the mean-centred reward
    close(rloo_advantages(rewards, 3), 1.5 * grpo_advantages(rewards, 3, scale_by_std=False))
    with pytest.raises(ValueError):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError):
        rloo_advantages(rewards, 4)


# --------------------------------------------------------------------------- GRPO


def grpo_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[list[float]]]:
    """Two sequences (3 and 2 tokens); returns (logp, old, ref, advantages, expected loss)."""
    old = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
    logp = old + t([[math.log(1.5), 0.0, math.log(0.5)], [math.log(0.7), 0.0, 0.0]])
    r = [[0.5, -0.5, 0.0], [1.0, 0.2, 0.0]]  # ref - logp
    ref = logp + t(r)
    logp[1, 2], ref[1, 2], old[1, 2] = NAN, -INF, INF  # padding
    adv = t([1.0, -1.0])
    beta = 0.1
    # A=+1: rho 1.5 -> -1.2 (clipped), rho 1 -> -1, rho 0.5 -> -0.5; A=-1: rho 0.7 -> 0.8 (clipped), rho 1 -> 1
    surrogate = [[-1.2, -1.0, -0.5], [0.8, 1.0, 0.0]]
    expected = [[surrogate[b][i] + beta * k3(r[b][i]) * (b == 0 or i < 2) for i in range(3)] for b in range(2)]
    return logp, old, ref, adv, expected


def test_grpo_loss_per_token_and_aggregations() -> None:
    logp, old, ref, adv, expected = grpo_example()
    logp.requires_grad_(True)
    loss, kl, clipped = grpo_loss(logp, old, ref, adv, MASK, clip_eps_low=0.2, beta=0.1)
    close(loss, expected)
    close(kl, [[k3(0.5), k3(-0.5), k3(0.0)], [k3(1.0), k3(0.2), 0.0]])
    close(clipped, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    row0, row1 = sum(expected[0]), sum(expected[1])
    close(aggregate_tokens(loss, MASK, "sequence"), [row0 / 3, row1 / 2])
    close(aggregate_tokens(loss, MASK, "token"), [row0, row1])
    close(aggregate_tokens(loss, MASK, "dr_grpo", max_completion_length=4), [row0 / 4, row1 / 4])
    with pytest.raises(ValueError):
        aggregate_tokens(loss, MASK, "dr_grpo")
    with pytest.raises(ValueError):
        aggregate_tokens(loss, MASK, "bnpo")
    loss.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[1, 2] == 0
    # beta = 0 drops the KL term from the loss but still reports the KL
    loss0, kl0, _ = grpo_loss(logp, old, ref, adv, MASK, beta=0.0)
    close(loss0, [[-1.2, -1.0, -0.5], [0.8, 1.0, 0.0]])
    close(kl0, kl.detach())
    with pytest.raises(ValueError):
        grpo_loss(logp, old, None, adv, MASK, beta=0.1)


def test_grpo_loss_on_policy_has_unit_ratio_and_the_policy_gradient() -> None:
    logp = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, NAN]], grad=True)
    loss, _, clipped = grpo_loss(logp, None, None, t([2.0, -3.0]), MASK)
    close(loss, [[-2.0, -2.0, -2.0], [3.0, 3.0, 0.0]])
    assert clipped.sum() == 0
    loss.sum().backward()
    close(logp.grad, [[-2.0, -2.0, -2.0], [3.0, 3.0, 0.0]])


def test_grpo_loss_ratio_weighted_kl_has_the_reverse_kl_gradient() -> None:
    logp = t([[-1.0, -2.0, -0.5]], grad=True)
    ref = t([[-1.5, -1.0, -0.5]])  # r = ref - logp = -0.5, 1, 0
    r = [-0.5, 1.0, 0.0]
    mask = torch.ones(1, 3)
    # on-policy, zero advantage: only beta * KL is left; same value either way
    plain, _, _ = grpo_loss(logp, None, ref, t([0.0]), mask, beta=0.1)
    weighted, _, _ = grpo_loss(logp, None, ref, t([0.0]), mask, beta=0.1, kl_ratio_weighted=True)
    close(plain, [[0.1 * k3(x) for x in r]])
    close(weighted, plain)
    # d k3 / d logp = 1 - e^r; d (rho k3) / d logp at rho = 1 = k3 + 1 - e^r = -r (the k1 gradient)
    (g_plain,) = torch.autograd.grad(plain.sum(), logp)
    (g_weighted,) = torch.autograd.grad(weighted.sum(), logp)
    close(g_plain, [[0.1 * (1 - math.exp(x)) for x in r]])
    close(g_weighted, [[-0.1 * x for x in r]])
    # off-policy the value is rho * k3
    old = logp.detach() - t([[math.log(1.1), 0.0, math.log(0.9)]])
    off, _, _ = grpo_loss(logp, old, ref, t([0.0]), mask, beta=0.1, kl_ratio_weighted=True)
    close(off, [[0.1 * 1.1 * k3(-0.5), 0.1 * k3(1.0), 0.0]])


def test_grpo_loss_clip_higher() -> None:
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = t([[math.log(1.25), math.log(1.3), math.log(0.75)]])
    loss, _, clipped = grpo_loss(logp, old, None, t([1.0]), torch.ones(1, 3), clip_eps_low=0.2, clip_eps_high=0.28)
    # A > 0: only the upper bound 1.28 can bind; 0.75 < 0.8 gives min(0.75, 0.8) = 0.75
    close(loss, [[-1.25, -1.28, -0.75]])
    close(clipped, [[0.0, 1.0, 0.0]])


# --------------------------------------------------------------------------- RLOO


def test_rloo_loss_reinforce_with_kl_in_the_reward() -> None:
    logps = t([-1.0, -2.0, -3.0, -4.0], grad=True)
    rewards = t([1.0, 0.0, 2.0, 1.0], grad=True)
    kl = t([0.5, 1.0, 0.0, 2.0])
    losses, adv = rloo_loss(logps, rewards, k=2, kl=kl, beta=0.1)
    # penalised rewards 0.95, -0.1 | 2.0, 0.8 -> advantages 1.05, -1.05 | 1.2, -1.2
    close(adv, [1.05, -1.05, 1.2, -1.2], tol=1e-12)
    close(losses, [1.05, -2.1, 3.6, -4.8], tol=1e-12)
    losses.sum().backward()
    close(logps.grad, [-1.05, 1.05, -1.2, 1.2], tol=1e-12)
    assert rewards.grad is None  # the reward and its KL penalty carry no gradient
    with pytest.raises(ValueError):
        rloo_loss(logps, rewards, k=2, beta=0.1)


def test_rloo_loss_clipped_sequence_ratio() -> None:
    old = t([-1.0, -1.0, -1.0, -1.0])
    logps = (old + t([math.log(1.5), 0.0, math.log(0.5), math.log(1.1)])).requires_grad_(True)
    rewards = t([1.0, 0.0, 0.0, 1.0])  # advantages +1, -1, -1, +1
    losses, adv = rloo_loss(logps, rewards, k=2, old_logps=old, clip_eps_low=0.2)
    close(adv, [1.0, -1.0, -1.0, 1.0])
    # rho 1.5, A=+1 -> -1.2 (clipped); rho 1, A=-1 -> 1; rho 0.5, A=-1 -> 0.8 (clipped); rho 1.1 -> -1.1
    close(losses, [-1.2, 1.0, 0.8, -1.1])
    # on-policy the clipped form has the REINFORCE gradient
    lp = t([-1.0, -2.0, -3.0, -4.0], grad=True)
    rloo_loss(lp, rewards, k=2, old_logps=lp.detach())[0].sum().backward()
    close(lp.grad, [-1.0, 1.0, 1.0, -1.0])


# --------------------------------------------------------------------------- SLiC / SPIN


def test_slic_hinge_on_the_log_ratio_difference() -> None:
    # h = (pc - pr) - (rc - rr) = 1, 3, -1, 0
    pc, pr = t([-1.0, -1.0, -3.0, -2.0]), t([-2.0, -4.0, -2.0, -2.0])
    rc, rr = t([0.0, 0.0, 0.0, -1.0]), t([0.0, 0.0, 0.0, -1.0])
    losses, cr, rj = slic_loss(pc, pr, rc, rr, beta=0.5)
    close(losses, [0.5, 0.0, 1.5, 1.0])  # relu(1 - 0.5 h)
    close(cr, [-0.5, -0.5, -1.5, -0.5])
    close(rj, [-1.0, -2.0, -1.0, -0.5])
    close(slic_loss(pc, pr, rc, rr, beta=0.5, margin=2.0)[0], [1.5, 0.5, 2.5, 2.0])


def test_spin_is_dpo_on_real_vs_generated_with_beta_lambda() -> None:
    from harness.core.losses import dpo_loss

    real, gen = t([-1.0, -5.0, -2.0]), t([-2.0, -1.0, -2.0])
    ref_real, ref_gen = t([-1.5, -4.0, -3.0]), t([-1.0, -1.0, -1.0])
    losses, real_r, gen_r = spin_loss(real, gen, ref_real, ref_gen, lam=0.3)
    # h = 1.5, -1, 2 -> log(1 + exp(-0.3 h))
    close(losses, [math.log1p(math.exp(-0.45)), math.log1p(math.exp(0.3)), math.log1p(math.exp(-0.6))])
    close(real_r, [0.15, -0.3, 0.3])
    close(gen_r, [-0.3, 0.0, -0.3])
    for a, b in zip((losses, real_r, gen_r), dpo_loss(real, gen, ref_real, ref_gen, beta=0.3)):
        close(a, b)


# --------------------------------------------------------------------------- padding never matters


def test_padding_content_does_not_change_any_per_token_result() -> None:
    g = torch.Generator().manual_seed(1)
    B, T = 3, 5
    mask = torch.arange(T)[None] < torch.tensor([5, 3, 1])[:, None]

    def rand() -> torch.Tensor:
        return torch.randn(B, T, generator=g, dtype=torch.float64)

    lp, old, ref, adv, val, old_val, ret = (rand() for _ in range(7))
    scores, seq_adv = torch.randn(B, generator=g, dtype=torch.float64), torch.randn(B, generator=g, dtype=torch.float64)

    def junk(x: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.where(mask, x, torch.full_like(x, fill))

    def results(fill: float) -> list[torch.Tensor]:
        j = [junk(x, fill) for x in (lp, old, ref, adv, val, old_val, ret)]
        out = [*kl_penalized_rewards(scores, j[0], j[2], mask, 0.1, "k3"), *gae(j[3], j[4], mask, 0.9, 0.8)]
        out += [*ppo_policy_loss(j[0], j[1], j[3], mask, 0.2), *ppo_value_loss(j[4], j[5], j[6], mask, 0.2)]
        out += [*grpo_loss(j[0], j[1], j[2], seq_adv, mask, 0.2, 0.28, beta=0.05), whiten(j[3], mask)]
        out += [aggregate_tokens(j[0], mask, m, 7) for m in ("sequence", "token", "dr_grpo")]
        return out

    base = results(0.0)
    for fill in (123.0, -INF, NAN):
        for a, b in zip(base, results(fill)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# --------------------------------------------------------------------------- judge score parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The response is relevant and helpful. Score: 4", 4.0),
        ("It earns 1 + 1 + 1 = 3 points, so the total is 3 points. Score: 3/5", 3.0),  # "/5" restates the scale
        ("Score: 3 out of 5.", 3.0),
        ("**Score:** 5", 5.0),
        ("score: 0", 0.0),
        ("Score: 4.5 points", 4.5),
        ("Score: 0.0", 0.0),
        ("Score: 7", None),  # outside the 0..5 rubric
        ("Score: -1", None),
        ("Score: 5.5", None),
        ("A fine answer with no verdict.", None),
        ("", None),
        ("Score: 2\nOn reflection the answer deserves more.\nScore: 4", 4.0),  # the last statement wins
        ("Score: 4\nWait, that is wrong. Score: 9", None),  # the last is invalid: no fallback to an earlier one
        ("Score: 4 ... format reminder: Score: <total points>", None),  # last label has no number
        ("Score: 3-4", None),  # a range is ambiguous
        ("Score: 3 or 4", None),
        ("Score: 3, 4", None),
        ("Score: 3/10", None),  # another scale: not ours to rescale
        ("Score: 4.5.1", None),
        ("Score: four", None),
        ("Score: 4 - a solid answer", 4.0),
        ("underscore: 4", None),
    ],
)
def test_self_reward_score(text: str, expected: float | None) -> None:
    assert self_reward_score(text) == expected


# --------------------------------------------------------------------------- parity with TRL 1.16

#: loss and gradient tolerance asked of every TRL check (float32 end to end)
TOL = 1e-5
#: vocabulary of the in-memory WordLevel tokenizer: pad, eos, then w0..w61
WORDS = ["<pad>", "<eos>"] + [f"w{i}" for i in range(62)]
PROMPTS = ["w3 w4 w5", "w7 w8", "w9", "w10 w11 w12 w13"]
MAX_COMPLETION = 6


@pytest.fixture(scope="module")
def tok() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Llama saved to disk: TRL loads its reference model from this path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        # a wide init makes per-token log-probs differ by whole nats, so a wrong convention shows
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


class RecordingReward:
    """A plain reward function whose values do not depend on the text (distinct within a
    group, so every advantage is non-zero); remembers what it returned."""

    __name__ = "recording_reward"

    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float]:
        out = [((i * 7) % 5) * 0.5 + 0.1 * i for i in range(len(completions))]
        self.calls.append(out)
        return out


def trl_trainer(kind: str, model_dir: Path, tok: Any, tmp: Path, **cfg: Any) -> tuple[Any, RecordingReward]:
    """TRL's trainer on the saved Llama with the policy perturbed away from the reference."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config_cls(
        output_dir=str(tmp), report_to=[], use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
        disable_dropout=True, logging_strategy="no", save_strategy="no", max_completion_length=MAX_COMPLETION,
        **cfg,
    )
    reward = RecordingReward()
    trainer = trainer_cls(model=str(model_dir), reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]), processing_class=tok)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which we do not run
    return trainer, reward


def plain_copies(trainer: Any, model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(policy, reference) as fresh models: TRL patches its models' forward with a fused LM
    head; these copies compute log-probs from the plain logits, independently of TRL."""
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM.from_pretrained(model_dir).eval()
    policy = LlamaForCausalLM.from_pretrained(model_dir)
    policy.load_state_dict(trainer.model.state_dict())
    return policy.train(), ref


def token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(completion token t | prompt, completion_<t) per completion position [B, C]."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    P = batch["prompt_ids"].size(1)
    logp = logits[:, P - 1 : -1].float().log_softmax(-1)
    return logp.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over all parameters, relative to the largest gradient entry when that
    exceeds 1 (float32 rounding grows with the gradient's size)."""
    assert a.keys() == b.keys() and a
    scale = max(1.0, max(b[k].abs().max().item() for k in b))
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


def hand_batch(tok: Any) -> dict[str, torch.Tensor]:
    """4 left-padded prompts, right-padded completions of 6, 4, 1 and 5 tokens."""
    enc = tok(PROMPTS, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    g = torch.Generator().manual_seed(3)
    completion_ids = torch.randint(2, len(WORDS), (len(PROMPTS), MAX_COMPLETION), generator=g)
    completion_mask = (torch.arange(MAX_COMPLETION)[None] < torch.tensor([6, 4, 1, 5])[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
    return {"prompt_ids": enc["input_ids"], "prompt_mask": enc["attention_mask"],
            "completion_ids": completion_ids, "completion_mask": completion_mask}


def our_micro_batch_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, step: dict[str, int],
                         accumulation_steps: int) -> torch.Tensor:
    """Our aggregation and the division a caller makes to match TRL's ``loss_type``
    (``aggregate_tokens``' docstring); ``step`` holds the optimizer step's global counts."""
    if loss_type == "grpo":  # global number of sequences
        return aggregate_tokens(per_token, mask, "sequence").sum() / step["sequences"]
    if loss_type == "bnpo":  # this micro-batch's token count x accumulation steps
        return aggregate_tokens(per_token, mask, "token").sum() / (mask.sum() * accumulation_steps)
    if loss_type == "dapo":  # global number of completion tokens (TRL's num_items_in_batch)
        return aggregate_tokens(per_token, mask, "token").sum() / step["tokens"]
    if loss_type == "dr_grpo":  # global number of sequences
        return aggregate_tokens(per_token, mask, "dr_grpo", MAX_COMPLETION).sum() / step["sequences"]
    raise AssertionError(loss_type)


@needs_trl
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("bias_correction_kl", [False, True], ids=["paper_kl", "ratio_weighted_kl"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_grpo_loss_matches_trl_compute_loss(
    loss_type: str, bias_correction_kl: bool, model_dir: Path, tok: Any, tmp_path: Path
) -> None:
    """One optimizer step of two accumulated micro-batches (2 sequences each, 10 and 6
    completion tokens, so "bnpo" and "dapo" differ): TRL's two ``_compute_loss`` calls
    summed, against ours divided by the step's global counts; gradients accumulated alike."""
    beta, eps_low, eps_high, accum = 0.04, 0.2, 0.28, 2
    trainer, _ = trl_trainer("grpo", model_dir, tok, tmp_path, loss_type=loss_type, beta=beta, epsilon=eps_low,
                             epsilon_high=eps_high, use_bias_correction_kl=bias_correction_kl,
                             per_device_train_batch_size=2, gradient_accumulation_steps=accum, num_generations=2)
    trainer.current_gradient_accumulation_steps = accum
    policy, ref = plain_copies(trainer, model_dir)
    batch = hand_batch(tok)
    mask = batch["completion_mask"]
    with torch.no_grad():
        ref_logps = token_logps(ref, batch)
        noise = torch.randn(ref_logps.shape, generator=torch.Generator().manual_seed(5)) * 0.4
        old_logps = (token_logps(policy, batch) + noise) * mask  # off-policy: some ratios leave [0.8, 1.28]
    advantages = torch.tensor([0.9, -0.7, 1.3, -1.1])
    full = {**batch, "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps}
    step = {"sequences": mask.size(0), "tokens": int(mask.sum())}

    trl_total, ours_total, n_clipped = 0.0, 0.0, 0
    for rows in (slice(0, 2), slice(2, 4)):
        micro = {k: v[rows] for k, v in full.items()}
        micro["num_items_in_batch"] = mask.sum()  # TRL: tokens of the whole generation batch
        trl_loss = trainer._compute_loss(trainer.model, micro)
        trl_loss.backward()
        per_token, _, clipped = grpo_loss(token_logps(policy, micro), micro["old_per_token_logps"],
                                          micro["ref_per_token_logps"], micro["advantages"], micro["completion_mask"],
                                          clip_eps_low=eps_low, clip_eps_high=eps_high, beta=beta,
                                          kl_ratio_weighted=bias_correction_kl)
        ours = our_micro_batch_loss(per_token, micro["completion_mask"], loss_type, step, accum)
        ours.backward()
        trl_total, ours_total, n_clipped = trl_total + trl_loss.item(), ours_total + ours.item(), n_clipped + clipped.sum()
    assert 0 < n_clipped < mask.sum()  # both branches of the surrogate are exercised

    loss_diff = abs(ours_total - trl_total)
    grad_diff = max_grad_diff(grads(policy), grads(trainer.model))
    print(f"\n[trl parity] GRPO loss_type={loss_type} bias_correction_kl={bias_correction_kl}: "
          f"loss diff {loss_diff:.3g}, grad diff (relative) {grad_diff:.3g}")
    assert loss_diff < TOL and grad_diff < TOL


@needs_trl
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_grpo_advantages_and_loss_match_trl_after_generation(
    scale_rewards: str, model_dir: Path, tok: Any, tmp_path: Path
) -> None:
    G = 4
    trainer, reward = trl_trainer("grpo", model_dir, tok, tmp_path, beta=0.1, scale_rewards=scale_rewards,
                                  per_device_train_batch_size=8, num_generations=G)  # loss_type "dapo"
    policy, ref = plain_copies(trainer, model_dir)
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(G)])
    rewards = torch.tensor(reward.calls[-1])
    ours_adv = grpo_advantages(rewards, G, scale_by_std=scale_rewards != "none")
    adv_diff = (ours_adv - out["advantages"]).abs().max().item()

    mask = out["completion_mask"]
    ref_logps = token_logps(ref, out).detach()
    ref_diff = ((ref_logps - out["ref_per_token_logps"]) * mask).abs().max().item()

    trl_loss = trainer._compute_loss(trainer.model, out)  # no old logps: mu = 1, ratio 1
    # TRL's default use_bias_correction_kl=True is our kl_ratio_weighted=True
    per_token, _, _ = grpo_loss(token_logps(policy, out), None, ref_logps, ours_adv, mask, beta=0.1,
                                kl_ratio_weighted=True)
    ours = aggregate_tokens(per_token, mask, "token").sum() / out["num_items_in_batch"]
    loss_diff = (ours - trl_loss).abs().item()
    print(f"\n[trl parity] GRPO generation scale_rewards={scale_rewards}: advantages {adv_diff:.3g}, "
          f"ref logps {ref_diff:.3g}, loss {loss_diff:.3g}")
    assert adv_diff < TOL and ref_diff < TOL and loss_diff < TOL


@needs_trl
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_rloo_advantages_and_loss_match_trl(model_dir: Path, tok: Any, tmp_path: Path) -> None:
    """RLOO's reward side (k1 sequence KL folded into the reward, leave-one-out baseline)
    lives in ``_generate_and_score_completions``, so this check samples completions; its
    loss (TRL: clipped surrogate on the sequence ratio, mean over sequences) in ``_compute_loss``."""
    k, beta = 4, 0.05
    trainer, reward = trl_trainer("rloo", model_dir, tok, tmp_path, beta=beta, per_device_train_batch_size=8,
                                  num_generations=k, epsilon=0.2, epsilon_high=0.28)
    policy, ref = plain_copies(trainer, model_dir)
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS[:2] for _ in range(k)])
    rewards = torch.tensor(reward.calls[-1])
    mask = out["completion_mask"]
    with torch.no_grad():
        old_tok = token_logps(policy, out)
        kl = masked_sum(old_tok - token_logps(ref, out), mask, dim=-1)
    old_diff = (masked_sum(old_tok, mask, dim=-1) - out["old_logps"]).abs().max().item()
    _, ours_adv = rloo_loss(masked_sum(old_tok, mask, dim=-1), rewards, k, kl=kl, beta=beta)
    adv_diff = (ours_adv - out["advantages"]).abs().max().item()
    assert kl.abs().max() > 0.1  # the KL penalty is really exercised

    # make the step off-policy so some sequence ratios leave [0.8, 1.28]
    old_logps = out["old_logps"] + torch.randn(2 * k, generator=torch.Generator().manual_seed(2)) * 0.4
    trl_loss = trainer._compute_loss(trainer.model, {**out, "old_logps": old_logps})
    trl_loss.backward()
    seq_logps = masked_sum(token_logps(policy, out), mask, dim=-1)
    losses, _ = rloo_loss(seq_logps, rewards, k, kl=kl, beta=beta, old_logps=old_logps,
                          clip_eps_low=0.2, clip_eps_high=0.28)
    ratio = (seq_logps - old_logps).exp()
    assert ((ratio < 0.8) | (ratio > 1.28)).any() and ((ratio > 0.8) & (ratio < 1.28)).any()
    ours = losses.sum() / losses.numel()  # TRL: mean over sequences
    ours.backward()
    loss_diff = (ours - trl_loss).abs().item()
    grad_diff = max_grad_diff(grads(policy), grads(trainer.model))
    print(f"\n[trl parity] RLOO: old logps {old_diff:.3g}, advantages {adv_diff:.3g}, loss {loss_diff:.3g}, "
          f"grad (relative) {grad_diff:.3g}")
    assert old_diff < TOL and adv_diff < TOL and loss_diff < TOL and grad_diff < TOL
