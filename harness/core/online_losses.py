"""Objectives and estimators of the online / iterative methods as pure functions on tensors.

PPO-style RLHF (KL-penalised rewards, GAE, clipped policy and value losses, the KL
controllers), GRPO / Dr. GRPO / DAPO, RLOO, and the pairwise losses of online preference
methods (SLiC-HF hinge as OAIF uses it, SPIN).  Nothing here knows about models, batches
or trainers: inputs are per-token tensors of shape [B, T] (completion positions only, with
a [B, T] mask that is 1 / True on completion tokens and 0 / False on padding) or
per-sequence tensors of shape [B].

Every loss is returned per token or per sequence, never reduced over the batch: the
caller (a method adapter) sums and divides by a *global* count (sequences or tokens over
all micro-batches and processes of one optimizer step), so gradient accumulation gives
exactly the full-batch gradient.  :func:`aggregate_tokens` states which count matches
each of TRL's GRPO ``loss_type`` values.

Masks are 0/1 (bool or float).  Every function that takes a mask returns exactly 0 at
padding positions, and padding inputs never reach its result or gradient even when they
hold ``inf``/``nan`` (masked positions are selected away, not multiplied by 0).

Tests: ``tests/test_online_losses.py`` (hand-computed values, parity with TRL 1.16's
GRPOTrainer / RLOOTrainer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- masked statistics


def _bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _fill(mask: Tensor, *xs: Tensor) -> list[Tensor]:
    """Each x with its padding positions replaced by 0 *before* any nonlinearity, so an
    ``inf``/``nan`` there reaches neither the result nor the gradient (``torch.where``'s
    backward multiplies the unused branch's gradient by 0, and 0 * nan = nan)."""
    m = _bool(mask)
    return [torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in xs]


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    r""":math:`\sum_{i: m_i = 1} x_i` over ``dim`` (all elements when ``None``).

    Masked-out entries are selected away (``torch.where``), so an ``inf`` or ``nan`` in the
    padding cannot leak into the sum or its gradient.
    """
    kept = torch.where(_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    r""":math:`\sum_i m_i x_i / \max(1, \sum_i m_i)` over ``dim`` (all elements when ``None``).

    A slice with no unmasked entry has mean 0 (the count is clamped at 1, as TRL does),
    not ``nan``.
    """
    count = _bool(mask).to(x.dtype).expand_as(x)
    count = count.sum() if dim is None else count.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    r"""Variance of the unmasked entries of ``x`` (all of them, one scalar).

    .. math:: \mathrm{Var} = \frac{1}{n - c}\sum_{i: m_i=1} (x_i - \bar x)^2,\qquad
              n = \sum_i m_i,\ c = 1 \text{ if unbiased else } 0

    Raises ``ValueError`` when fewer than 1 (biased) or 2 (unbiased) entries are unmasked
    instead of returning ``nan``/``inf`` silently.  (Reads the count with ``.item()``: call
    it once per rollout batch, not per token.)
    """
    n = int(_bool(mask).expand_as(x).sum().item())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} unmasked entries, got {n}")
    (x,) = _fill(mask, x)
    mean = masked_mean(x, mask)
    return masked_sum((x - mean) ** 2, mask) / (n - 1 if unbiased else n)


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    r"""Whitening of rewards or advantages over the unmasked entries of the whole batch
    (Ziegler et al. 2019, 1909.08593, reward normalisation; Ouyang et al. 2022, 2203.02155):

    .. math:: \tilde x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}},\qquad
              \mu,\ \sigma^2 = \text{mean and unbiased variance of } \{x_i : m_i = 1\}

    With ``shift_mean=False`` the mean is added back, :math:`\tilde x_i + \mu` (only the
    scale changes; used for rewards, whose sign carries meaning).  Padding positions of the
    result are 0.  ``mask=None`` whitens over every element.
    """
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    (x,) = _fill(mask, x)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(_bool(mask), out, torch.zeros((), dtype=out.dtype, device=out.device))


def global_moments(x: Tensor, mask: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance of the masked entries of ``x`` over every process:
    ``all_reduce`` sums a tensor across processes (None on one process), so the statistics
    of a data-parallel rollout are those of the whole batch, not of each process's share."""
    m = _bool(mask)
    (x,) = _fill(m, x)
    xd = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).double()
    s = torch.stack([xd.sum(), (xd * xd).sum(), m.sum().double()])
    if all_reduce is not None:
        s = all_reduce(s)
    n = s[2]
    if float(n) < 2:
        raise ValueError(f"global_moments needs at least 2 unmasked entries, got {int(n)}")
    mean = s[0] / n
    var = (s[1] - n * mean * mean).clamp(min=0) / (n - 1)
    return mean.to(x.dtype), var.to(x.dtype)


def global_mean(x: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None) -> float:
    """Mean of every element of ``x`` over all processes (a statistic to log)."""
    s = torch.stack([x.double().sum(), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
    if all_reduce is not None:
        s = all_reduce(s)
    return float(s[0] / s[1].clamp(min=1))


def global_whiten(x: Tensor, mask: Tensor, all_reduce: Callable[[Tensor], Tensor] | None = None,
                  shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """:func:`whiten` with the moments of the whole data-parallel batch (:func:`global_moments`);
    on one process it equals :func:`whiten` (tested)."""
    mean, var = global_moments(x, mask, all_reduce)
    (x,) = _fill(mask, x)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(_bool(mask), out, torch.zeros((), dtype=out.dtype, device=out.device))


# --------------------------------------------------------------------------- KL estimators and penalties


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    r"""Per-token unbiased, non-negative estimator of :math:`\mathrm{KL}(\pi_\theta \| \pi_{ref})`
    from samples of :math:`\pi_\theta` (Schulman 2020, "Approximating KL Divergence", k3;
    GRPO eq. 4, Shao et al. 2024, 2402.03300):

    .. math:: \hat{\mathbb{D}}_t = e^{r_t} - r_t - 1,\qquad
              r_t = \log\pi_{ref}(o_t|q,o_{<t}) - \log\pi_\theta(o_t|q,o_{<t})

    Elementwise; mask padding yourself (or use the returned values only where the mask is 1).
    """
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1


def kl_penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float | Tensor,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    r"""Per-token rewards of KL-regularised RLHF (Ziegler et al. 2019, 1909.08593, eq. 2;
    Ouyang et al. 2022, 2203.02155, eq. 2):

    .. math::
        R_t = -\beta\,\widehat{\mathrm{KL}}_t + \mathbb{1}[t = T_b]\; r_\phi(x, y),\qquad
        \widehat{\mathrm{KL}}_t = \begin{cases}
            \log\pi_\theta(y_t|\cdot) - \log\pi_{ref}(y_t|\cdot) & \text{k1} \\
            e^{\rho_t} - \rho_t - 1,\ \rho_t = \log\pi_{ref} - \log\pi_\theta & \text{k3 (see } k3\_kl)
        \end{cases}

    so that :math:`\sum_t R_t = r_\phi(x, y) - \beta \sum_t \widehat{\mathrm{KL}}_t`, the
    papers' sequence reward.  :math:`T_b` is the last completion token of row b (the last
    position where ``mask`` is 1); a row with no completion token gets no score.  ``scores``
    is [B], the others [B, T]; pass detached rollout-time tensors (rewards carry no gradient).

    Returns (rewards [B, T], kl [B, T]), both 0 at padding.
    """
    m = _bool(mask)
    logprobs, ref_logprobs = _fill(m, logprobs, ref_logprobs)
    if estimator == "k1":
        kl = logprobs - ref_logprobs
    elif estimator == "k3":
        kl = k3_kl(logprobs, ref_logprobs)
    else:
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    kl = torch.where(m, kl, zero)
    rewards = -kl_coef * kl
    T = m.size(-1)
    has_tokens = m.any(dim=-1)
    last = (T - 1) - m.flip(-1).to(torch.int8).argmax(dim=-1)  # last True position per row
    bonus = torch.zeros_like(rewards)
    bonus[torch.arange(m.size(0), device=m.device), last] = torch.where(has_tokens, scores.to(rewards.dtype), zero)
    return rewards + bonus, kl


class FixedKLController:
    """Constant KL coefficient β, with the same interface as :class:`AdaptiveKLController`."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed coefficient ignores the measured KL."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    r"""Proportional controller of the KL coefficient (Ziegler et al. 2019, 1909.08593, sec. 2.2):

    .. math::
        e_t = \mathrm{clip}\Big(\frac{\mathrm{KL}(\pi_t, \rho) - \mathrm{KL}_{target}}{\mathrm{KL}_{target}},
                               -0.2,\ 0.2\Big),\qquad
        \beta_{t+1} = \beta_t\,(1 + K_\beta\, e_t),\quad K_\beta = \frac{n_{steps}}{\text{horizon}}

    ``current_kl`` is the measured KL per sequence (nats) of the last rollout batch and
    ``n_steps`` the number of samples (episodes) it held.  ``state_dict`` /
    ``load_state_dict`` carry β (and the settings) across a resume.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


# --------------------------------------------------------------------------- PPO


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    r"""Generalised advantage estimation (Schulman et al. 2015, 1506.02438, eq. 16):

    .. math::
        \delta_t = R_t + \gamma V_{t+1} - V_t,\qquad
        \hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}
                 = \delta_t + \gamma\lambda \hat A_{t+1},\qquad
        \hat G_t = \hat A_t + V_t

    computed backwards over the completion.  The episode ends at the last completion
    token: there :math:`V_{t+1} = 0` and :math:`\hat A_{t+1} = 0` (no bootstrap), and values
    or rewards at padding positions never enter.  ``mask`` must be right-padded (each row's
    completion tokens form a prefix): a 0 inside a row ends that row's episode there.

    Returns (advantages [B, T], returns [B, T]), both 0 at padding.  Not whitened: see
    :func:`whiten`.  Pass detached tensors (rollout statistics).
    """
    m = _bool(mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    r = torch.where(m, rewards, zero)
    v = torch.where(m, values, zero)
    mf = m.to(values.dtype)
    T = values.size(-1)
    advantages = torch.zeros_like(v)
    next_adv = torch.zeros_like(v[..., 0])
    next_value = torch.zeros_like(v[..., 0])
    next_valid = torch.zeros_like(v[..., 0])
    for t in reversed(range(T)):
        delta = r[..., t] + gamma * next_value * next_valid - v[..., t]
        adv = delta + gamma * lam * next_adv * next_valid
        adv = adv * mf[..., t]
        advantages[..., t] = adv
        next_adv, next_value, next_valid = adv, v[..., t], mf[..., t]
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def _clipped_surrogate(
    log_ratio: Tensor, advantages: Tensor, clip_eps_low: float, clip_eps_high: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(-min(ρA, clip(ρ)A), clipped-branch-active indicator, ρ) elementwise."""
    high = clip_eps_low if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + high)
    loss = torch.maximum(unclipped, clipped)
    # the clipped branch is the maximum exactly when ρ left [1-ε_low, 1+ε_high] on the side
    # where clipping binds: ρ > 1+ε_high with A > 0, or ρ < 1-ε_low with A < 0
    is_clipped = (clipped > unclipped).detach()
    return loss, is_clipped, ratio


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""PPO's clipped surrogate, negated as a loss (Schulman et al. 2017, 1707.06347, eq. 7):

    .. math::
        \rho_t = \frac{\pi_\theta(a_t|s_t)}{\pi_{\theta_{old}}(a_t|s_t)},\qquad
        \ell_t = -\min\big(\rho_t \hat A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,\hat A_t\big)

    ``clip_eps_high`` (default ε) gives DAPO's decoupled upper bound (Yu et al. 2025,
    2503.14476).  ``advantages`` is [B, T] (or [B], broadcast over tokens).

    Returns per-token (loss, clipped, approx_kl), all [B, T] and 0 at padding:

    - ``clipped``: 1.0 where the clipped branch is the active (larger) one, i.e. the token
      gives no gradient; its masked mean is the usual ``clipfrac``.
    - ``approx_kl``: :math:`\tfrac12(\log\rho_t)^2`, the estimator OpenAI baselines' ppo2 and
      TRL's (pre-1.0) PPOTrainer log as ``approxkl`` (a k2 estimate of KL(π_old‖π_θ)); detached.
    """
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    m = _bool(mask)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    logprobs, old_logprobs, advantages = _fill(m, logprobs, old_logprobs, advantages)
    log_ratio = logprobs - old_logprobs
    loss, is_clipped, _ = _clipped_surrogate(log_ratio, advantages, clip_eps, clip_eps_high)
    loss = torch.where(m, loss, zero)
    clipped = (is_clipped & m).to(logprobs.dtype)
    approx_kl = torch.where(m, 0.5 * log_ratio.detach() ** 2, zero)
    return loss, clipped, approx_kl


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_value: float
) -> tuple[Tensor, Tensor]:
    r"""PPO's clipped value loss (as in OpenAI baselines ppo2 and Ziegler et al.'s lm-human-preferences):

    .. math::
        V^{clip}_t = V^{old}_t + \mathrm{clip}(V_t - V^{old}_t, -c, c),\qquad
        \ell^V_t = \tfrac12 \max\big((V_t - \hat G_t)^2,\ (V^{clip}_t - \hat G_t)^2\big)

    Returns per-token (loss, clipped) [B, T], 0 at padding; ``clipped`` is 1.0 where the
    clipped error is the larger one (the usual ``vf_clipfrac``).
    """
    m = _bool(mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values, old_values, returns = _fill(m, values, old_values, returns)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = torch.where(m, 0.5 * torch.maximum(err, err_clipped), zero)
    clipped = ((err_clipped > err).detach() & m).to(values.dtype)
    return loss, clipped


# --------------------------------------------------------------------------- group baselines


def _groups(rewards: Tensor, size: int, name: str) -> Tensor:
    if rewards.dim() != 1 or rewards.numel() % size != 0:
        raise ValueError(f"{name}: rewards must be 1-D with a length divisible by {size}, got {tuple(rewards.shape)}")
    return rewards.view(-1, size)


def grpo_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    r"""Group-relative advantages (GRPO, Shao et al. 2024, 2402.03300, sec. 4.1.2, outcome supervision):

    .. math:: \hat A_i = \frac{r_i - \mathrm{mean}(r_1..r_G)}{\mathrm{std}(r_1..r_G) + \epsilon}

    with the unbiased (n-1) standard deviation and ε added to it, as TRL does.  With
    ``scale_by_std=False`` it is Dr. GRPO's :math:`\hat A_i = r_i - \mathrm{mean}(r)` (Liu et al.
    2025, 2503.20783), which drops the question-difficulty weighting of 1/std.
    ``rewards`` [N] holds consecutive groups of ``group_size`` completions of one prompt;
    returns [N].  A group of one has advantage 0.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    g = _groups(rewards, group_size, "grpo_advantages")
    adv = g - g.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    r"""REINFORCE leave-one-out advantages (Ahmadian et al. 2024, 2402.14740;
    Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"):

    .. math:: \hat A_i = r_i - \frac{1}{k-1}\sum_{j \ne i} r_j

    ``rewards`` [N] holds consecutive groups of ``k`` samples of one prompt (k ≥ 2); returns [N].
    """
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt for a leave-one-out baseline, got k={k}")
    g = _groups(rewards, k, "rloo_advantages")
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


# --------------------------------------------------------------------------- GRPO


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    kl_ratio_weighted: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-token GRPO loss (Shao et al. 2024, 2402.03300, eq. 3), before aggregation:

    .. math::
        \ell_{i,t} = -\min\big(\rho_{i,t}\hat A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\epsilon_{low}, 1+\epsilon_{high})\hat A_i\big)
                     + \beta\,\hat{\mathbb{D}}_{i,t},\qquad
        \rho_{i,t} = \frac{\pi_\theta(o_{i,t}|q, o_{i,<t})}{\pi_{\theta_{old}}(o_{i,t}|q, o_{i,<t})}

    with :math:`\hat A_i` the sequence advantage [B] broadcast over its tokens
    (:func:`grpo_advantages`) and :math:`\hat{\mathbb{D}}` the k3 estimator (:func:`k3_kl`,
    against ``ref_logprobs``; may be ``None`` when ``beta == 0``).  ``clip_eps_high``
    (default ``clip_eps_low``) is DAPO's clip-higher (Yu et al. 2025, 2503.14476).
    ``old_logprobs=None`` means one policy update per rollout (μ = 1): :math:`\pi_{\theta_{old}}`
    is the current policy, detached, so ρ = 1 and only its gradient remains.

    ``kl_ratio_weighted=True`` uses :math:`\beta\,\rho_{i,t}\hat{\mathbb{D}}_{i,t}` instead, with
    the unclipped, differentiable ratio: the importance-weighted KL whose gradient is the
    unbiased reverse-KL gradient when sampling from :math:`\pi_{\theta_{old}}` (DeepSeek-AI 2025,
    DeepSeek-V3.2, 2512.02556).  TRL 1.16's ``GRPOConfig.use_bias_correction_kl`` does this and
    defaults to True; even on-policy (ρ = 1) it changes the gradient, not the value.  The
    paper's GRPO is ``False``.

    Returns per-token (loss, kl, clipped) [B, T], all 0 at padding; reduce the loss with
    :func:`aggregate_tokens`.  ``kl`` is the unweighted k3 estimate (detached when β = 0);
    ``clipped`` is 1.0 where the clipped branch binds (TRL's ``clip_ratio/region_mean`` is
    its masked mean).
    """
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    m = _bool(mask)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("grpo_loss: beta != 0 needs ref_logprobs")
    logprobs, old_logprobs, advantages = _fill(m, logprobs, old_logprobs, advantages)
    log_ratio = logprobs - old_logprobs
    loss, is_clipped, _ = _clipped_surrogate(log_ratio, advantages, clip_eps_low, clip_eps_high)
    if ref_logprobs is None:
        kl = torch.zeros_like(logprobs)
    else:
        (ref_logprobs,) = _fill(m, ref_logprobs)
        kl = torch.where(m, k3_kl(logprobs, ref_logprobs), zero)
        if beta != 0.0:
            loss = loss + beta * (kl * torch.exp(log_ratio) if kl_ratio_weighted else kl)
        else:
            kl = kl.detach()
    loss = torch.where(m, loss, zero)
    return loss, kl, (is_clipped & m).to(logprobs.dtype)


def aggregate_tokens(
    per_token: Tensor, mask: Tensor, mode: str, max_completion_length: int | None = None
) -> Tensor:
    r"""Per-sequence reduction of a per-token loss [B, T] to [B]; the caller sums the result
    over the micro-batch and divides by a count, which fixes the aggregation:

    ==========  =====================================================  ========================================
    ``mode``    returned per sequence i                                caller divides the sum over sequences by
    ==========  =====================================================  ========================================
    "sequence"  :math:`\frac{1}{|o_i|}\sum_t \ell_{i,t}` (GRPO eq. 3)  the number of sequences
    "token"     :math:`\sum_t \ell_{i,t}` (DAPO)                       the number of completion tokens
    "dr_grpo"   :math:`\frac{1}{L_{max}}\sum_t \ell_{i,t}` (Dr. GRPO)  the number of sequences
    ==========  =====================================================  ========================================

    To reproduce TRL 1.16's ``GRPOTrainer`` ``loss_type`` (its ``_compute_loss``):

    - ``"grpo"``: mode "sequence"; TRL takes the mean over the micro-batch's sequences and
      divides by the accumulation steps, i.e. divide by the number of sequences in the
      optimizer step (global count = TRL's when micro-batches have equal size, which TRL's
      sampler guarantees).
    - ``"dapo"`` (TRL's default): mode "token"; divide by the number of completion tokens in
      the whole optimizer step over all processes (TRL's ``num_items_in_batch``, rescaled by
      processes and steps_per_generation / gradient_accumulation_steps; DDP's gradient mean
      then restores the global token count).
    - ``"bnpo"``: mode "token"; TRL divides by the *local micro-batch's* token count and then
      by the accumulation steps, so divide each micro-batch by its own token count times
      the number of micro-batches (not a global count: bnpo is micro-batch-local by design).
    - ``"dr_grpo"``: mode "dr_grpo" with ``max_completion_length`` = TRL's
      ``max_completion_length``; divide by the number of sequences in the optimizer step
      (TRL: sum / (B · L_max) per micro-batch, then / accumulation steps).

    A row with no completion token contributes 0 in every mode.
    """
    sums = masked_sum(per_token, mask, dim=-1)
    if mode == "sequence":
        return sums / _bool(mask).to(per_token.dtype).sum(dim=-1).clamp(min=1.0)
    if mode == "token":
        return sums
    if mode == "dr_grpo":
        if not max_completion_length or max_completion_length <= 0:
            raise ValueError("aggregate_tokens(mode='dr_grpo') needs a positive max_completion_length")
        return sums / max_completion_length
    raise ValueError(f"mode must be 'sequence', 'token' or 'dr_grpo', got {mode!r}")


# --------------------------------------------------------------------------- RLOO


def rloo_loss(
    policy_logps: Tensor,
    rewards: Tensor,
    k: int,
    kl: Tensor | None = None,
    beta: float = 0.0,
    old_logps: Tensor | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""RLOO's REINFORCE loss per sequence (Ahmadian et al. 2024, 2402.14740),
    with the sequence-level KL penalty folded into the reward:

    .. math::
        \tilde r_i = r_i - \beta\,\mathrm{KL}_i,\qquad
        \hat A_i = \tilde r_i - \frac{1}{k-1}\sum_{j\ne i}\tilde r_j,\qquad
        \mathcal{L}_i = -\hat A_i \log\pi_\theta(y_i|x)

    ``policy_logps`` [B] are summed completion log-probs; ``kl`` [B] is the sequence KL
    estimate :math:`\sum_t \log\pi_{\theta_{old}}(y_t|\cdot) - \log\pi_{ref}(y_t|\cdot)` (k1,
    summed over the completion, as the paper and TRL's RLOOTrainer use; e.g.
    ``masked_sum(old - ref, mask, -1)``).  The penalised reward and the advantage carry no
    gradient.  Samples come in consecutive groups of ``k``.

    With ``old_logps`` [B] the REINFORCE term becomes TRL's sequence-level clipped surrogate
    :math:`-\min(\rho_i\hat A_i, \mathrm{clip}(\rho_i, 1-\epsilon_{low}, 1+\epsilon_{high})\hat A_i)`,
    :math:`\rho_i = \pi_\theta(y_i|x)/\pi_{\theta_{old}}(y_i|x)`; at :math:`\rho_i = 1` (on-policy)
    its gradient equals the REINFORCE gradient :math:`-\hat A_i\nabla\log\pi_\theta(y_i|x)`, only the
    value differs.  TRL's loss is the mean over sequences: divide the sum by the number of
    sequences.

    Returns (losses [B], advantages [B]).
    """
    penalized = rewards
    if beta != 0.0:
        if kl is None:
            raise ValueError("rloo_loss: beta != 0 needs the sequence kl")
        penalized = rewards - beta * kl
    advantages = rloo_advantages(penalized.detach(), k)
    if old_logps is None:
        return -advantages * policy_logps, advantages
    losses, _, _ = _clipped_surrogate(policy_logps - old_logps, advantages, clip_eps_low, clip_eps_high)
    return losses, advantages


# --------------------------------------------------------------------------- online pairwise losses


def slic_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    margin: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""SLiC-HF's rank-calibration hinge (Zhao et al. 2023, 2305.10425) on the
    log-ratio difference, as OAIF uses it (Guo et al. 2024, 2402.04792) and TRL names it
    ``loss_type="hinge"``:

    .. math::
        h = \log\frac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)} - \log\frac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)},
        \qquad \mathcal{L} = \max(0,\ m - \beta h)

    With m = 1 this is TRL's :math:`\mathrm{relu}(1 - \beta h)`.  The paper's form
    :math:`\max(0, \delta - \log\pi_\theta(y_w|x) + \log\pi_\theta(y_l|x))` is the case of zero
    reference log-probs scaled by 1/β, with δ = m/β.  Returns (losses, chosen_rewards,
    rejected_rewards) like ``harness.core.losses.dpo_loss``, rewards β·log-ratio, detached.
    """
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = torch.relu(margin - beta * h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def spin_loss(
    policy_real_logps: Tensor,
    policy_generated_logps: Tensor,
    ref_real_logps: Tensor,
    ref_generated_logps: Tensor,
    lam: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Self-Play Fine-Tuning's loss (Chen et al. 2024, 2401.01335, eq. 4.7 / Algorithm 1):

    .. math::
        \mathcal{L}_{SPIN} = \ell\Big(\lambda\log\frac{p_\theta(y|x)}{p_{\theta_t}(y|x)}
                                 - \lambda\log\frac{p_\theta(y'|x)}{p_{\theta_t}(y'|x)}\Big),
        \qquad \ell(t) = \log(1 + e^{-t})

    with y the real (SFT) response, y' the response generated by the previous iterate
    :math:`p_{\theta_t}` (the "ref" log-probs here: the opponent of this iteration, not a fixed
    SFT model) and λ the regularisation.  On (real, generated) pairs it coincides with DPO
    (``harness.core.losses.dpo_loss``) with β = λ.  Returns (losses, real_rewards,
    generated_rewards), rewards λ·log-ratio, detached.
    """
    h = (policy_real_logps - policy_generated_logps) - (ref_real_logps - ref_generated_logps)
    losses = -F.logsigmoid(lam * h)
    real_rewards = lam * (policy_real_logps - ref_real_logps).detach()
    generated_rewards = lam * (policy_generated_logps - ref_generated_logps).detach()
    return losses, real_rewards, generated_rewards
