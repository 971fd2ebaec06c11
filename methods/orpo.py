"""ORPO: monolithic preference optimisation, NLL on chosen plus a weighted odds-ratio term, no reference.

    harness run method=orpo method.beta=0.1
"""

from dataclasses import dataclass
from typing import Any

from harness.core.config import ranged
from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    pairwise_metrics,
    register_method,
    suggest_beta_lr,
)
from harness.core.losses import orpo_odds_ratio_loss, sft_loss


@dataclass
class ORPOConfig:
    #: the paper's λ weighting the odds-ratio term (TRL calls it beta); paper: 0.1
    beta: float = ranged(0.1, gt=0)


@register_method
class ORPO:
    name = "orpo"
    paper = Paper("ORPO: Monolithic Preference Optimization without Reference Model", "2403.07691", "Hong et al.")
    data_kind = DataKind.PAIRED
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = ORPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_beta_lr(trial)

    def objective(self, hp, policy, reference, norm):
        c, r = policy["chosen"], policy["rejected"]
        or_losses, log_odds = orpo_odds_ratio_loss(c.mean_logps, r.mean_logps)
        nll = sft_loss(c.logps).sum() / max(norm.tokens["chosen"], 1)
        loss = nll + hp.beta * or_losses.sum() / norm.sequences
        metrics = pairwise_metrics(hp.beta * c.mean_logps.detach(), hp.beta * r.mean_logps.detach())
        metrics["log_odds_ratio"] = log_odds
        return ObjectiveOutput(loss, metrics)
