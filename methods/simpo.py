"""SimPO: reference-free preference optimisation with a length-normalised reward and a margin.

    harness run method=simpo method.beta=2.0 method.gamma=1.0
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
    suggest_lr,
)
from harness.core.losses import simpo_loss


@dataclass
class SimPOConfig:
    #: reward scale β (paper: 2.0-2.5)
    beta: float = ranged(2.0, gt=0)
    #: target reward margin γ (paper's recommended γ/β = 0.5; 0 = no margin)
    gamma: float = ranged(1.0, ge=0)
    #: assumed probability that a preference label is flipped (as in cDPO)
    label_smoothing: float = ranged(0.0, ge=0, lt=0.5)
    #: ablation: false uses summed log-probs (the paper's "w/o LN", which hurts most)
    length_normalize: bool = True


@register_method
class SimPO:
    name = "simpo"
    paper = Paper("SimPO: Simple Preference Optimization with a Reference-Free Reward", "2405.14734", "Meng et al.")
    data_kind = DataKind.PAIRED
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = SimPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "method.beta": trial.suggest_float("method.beta", 1.0, 10.0, log=True),
            "method.gamma": trial.suggest_float("method.gamma", 0.0, 2.0),
            **suggest_lr(trial, 1e-5, 1e-3),
        }

    def objective(self, hp, policy, reference, norm):
        c, r = policy["chosen"], policy["rejected"]
        pc, pr = (c.mean_logps, r.mean_logps) if hp.length_normalize else (c.logps, r.logps)
        losses, wc, wr = simpo_loss(pc, pr, beta=hp.beta, gamma=hp.gamma, label_smoothing=hp.label_smoothing)
        return ObjectiveOutput(losses.sum() / norm.sequences, pairwise_metrics(wc, wr))
