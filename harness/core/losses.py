"""Training objectives as pure functions on per-sequence log-prob tensors.

Nothing here knows about models, batches or trainers: each function takes tensors of
shape [B] (summed or length-averaged completion log-probs, reward-head scores) and
returns per-example losses of shape [B] plus the implicit rewards a paper defines.
The method adapters in ``methods/`` reduce them (see ``harness.core.contract.Normalizer``).
Tests: ``tests/test_losses.py`` (hand-computed values, parity with TRL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sft_loss(policy_logps: Tensor) -> Tensor:
    r"""Completion-only negative log-likelihood, summed over the completion's tokens.

    .. math:: \mathcal{L}_{SFT}(x, y) = -\sum_t \log \pi_\theta(y_t \mid x, y_{<t})

    The caller divides by the number of completion tokens in the step (token mean).
    """
    return -policy_logps


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | float = 0.0) -> Tensor:
    r"""Reward-model loss on pairwise comparisons (Christiano et al. 2017, 1706.03741;
    Ouyang et al. 2022, 2203.02155, eq. 1):

    .. math:: \mathcal{L}_{RM} = -\log \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l) - m\big)

    ``margin`` m is the optional per-pair margin of Llama 2's reward model (0 = the paper's).
    """
    return -F.logsigmoid(chosen_scores - rejected_scores - margin)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Direct Preference Optimization (Rafailov et al. 2023, 2305.18290, eq. 7):

    .. math::
        h = \log\frac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)} - \log\frac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)},
        \qquad \mathcal{L}_{DPO} = -\log\sigma(\beta h)

    With ``label_smoothing`` ε > 0 this is conservative DPO (cDPO; Mitchell 2023), which
    assumes labels are flipped with probability ε:
    :math:`-(1-\varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h)`.

    Returns (losses, chosen_rewards, rejected_rewards); the implicit rewards are
    :math:`\beta \log \pi_\theta(y|x)/\pi_{ref}(y|x)`, detached.
    """
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Identity Preference Optimisation (Azar et al. 2023, 2310.12036, eq. 17):

    .. math:: \mathcal{L}_{IPO} = \Big(h - \frac{1}{2\beta}\Big)^2

    with h the log-ratio difference of :func:`dpo_loss` (β is the paper's τ).  TRL feeds
    length-averaged log-probs here; the IPO adapter does too by default.
    """
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = (h - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Simple Preference Optimization (Meng et al. 2024, 2405.14734, eq. 6), reference-free:

    .. math::
        \mathcal{L}_{SimPO} = -\log\sigma\Big(\frac{\beta}{|y_w|}\log\pi_\theta(y_w|x)
                                       - \frac{\beta}{|y_l|}\log\pi_\theta(y_l|x) - \gamma\Big)

    Inputs are length-averaged log-probs :math:`\frac{1}{|y|}\log\pi_\theta(y|x)`; γ is the
    target reward margin.  Rewards are :math:`\frac{\beta}{|y|}\log\pi_\theta(y|x)`.
    """
    logits = beta * (policy_chosen_avg_logps - policy_rejected_avg_logps) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * policy_chosen_avg_logps.detach(), beta * policy_rejected_avg_logps.detach()


def orpo_odds_ratio_loss(
    policy_chosen_avg_logps: Tensor, policy_rejected_avg_logps: Tensor
) -> tuple[Tensor, Tensor]:
    r"""ORPO's odds-ratio term (Hong et al. 2024, 2403.07691, eqs. 4-7):

    .. math::
        \mathrm{odds}_\theta(y|x) = \frac{P_\theta(y|x)}{1 - P_\theta(y|x)},\qquad
        \mathcal{L}_{OR} = -\log\sigma\Big(\log\frac{\mathrm{odds}_\theta(y_w|x)}{\mathrm{odds}_\theta(y_l|x)}\Big)

    with :math:`\log P_\theta(y|x)` the length-averaged log-prob.  The full objective is
    :math:`\mathcal{L}_{SFT} + \lambda\,\mathcal{L}_{OR}` (the adapter adds the NLL).
    Returns (per-example L_OR, log odds ratio).
    """
    log_odds = (policy_chosen_avg_logps - policy_rejected_avg_logps) - (
        _log1mexp(policy_chosen_avg_logps) - _log1mexp(policy_rejected_avg_logps)
    )
    return -F.logsigmoid(log_odds), log_odds.detach()


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0 without cancellation: ``log1p(-exp(x))`` rounds 1 - exp(x)
    to 0 in float32 once x > -6e-8 (a memorised reply), giving inf and a NaN gradient.
    Switching to ``log(-expm1(x))`` above -log 2 keeps both branches accurate (Mächler 2012).
    Each branch sees its input clamped to its own side so the unused branch cannot put an
    inf into ``torch.where``'s backward (0 * inf = NaN)."""
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x.clamp(max=t))), torch.log(-torch.expm1(x.clamp(min=t))))


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    r"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, 2402.01306, eq. 8):

    .. math::
        r_\theta = \log\frac{\pi_\theta(y|x)}{\pi_{ref}(y|x)},\quad
        v(x,y) = \begin{cases}
            \lambda_D\,\sigma(\beta(r_\theta - z_0)) & y \text{ desirable} \\
            \lambda_U\,\sigma(\beta(z_0 - r_\theta)) & y \text{ undesirable}
        \end{cases},\quad
        \mathcal{L}_{KTO} = \lambda_y - v(x, y)

    ``kl`` is the reference point :math:`z_0`, a scalar estimate of
    :math:`\mathrm{KL}(\pi_\theta \| \pi_{ref})` from mismatched (x, y') pairs, clamped at
    0 and detached (see :func:`kto_kl_estimate`).  ``desirable`` is a bool tensor [B].
    Returns (losses, rewards) with rewards :math:`\beta r_\theta` (detached).
    """
    logratio = policy_logps - ref_logps
    d = desirable.to(dtype=torch.bool)
    loss_d = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    loss_u = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    return torch.where(d, loss_d, loss_u), beta * logratio.detach()


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    r"""KTO's reference point :math:`z_0 = \max(0, \mathbb{E}[\log\pi_\theta(y'|x) - \log\pi_{ref}(y'|x)])`
    over mismatched pairs, detached (no gradient flows through the baseline)."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def cpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, beta: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Contrastive Preference Optimization's preference term (Xu et al. 2024, 2401.08417, eq. 3):

    .. math:: \mathcal{L}_{prefer} = -\log\sigma\big(\beta\log\pi_\theta(y_w|x) - \beta\log\pi_\theta(y_l|x)\big)

    (the adapter adds the NLL on chosen, :math:`\mathcal{L}_{CPO} = \mathcal{L}_{prefer} + \mathcal{L}_{NLL}`).
    """
    losses = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()
