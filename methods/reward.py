"""Reward model from pairwise preferences (Bradley-Terry), the RM stage of RLHF.

    harness run method=reward            # scalar head on the toy SFT base
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
from harness.core.losses import bradley_terry_loss


@dataclass
class RewardConfig:
    #: constant margin m in -log σ(r_w - r_l - m); 0 is Christiano et al. / InstructGPT
    margin: float = ranged(0.0, ge=0)


@register_method
class RewardModel:
    name = "reward"
    paper = Paper("Deep reinforcement learning from human preferences", "1706.03741", "Christiano et al.")
    data_kind = DataKind.PAIRED
    needs_reference = False
    model_kind = "reward"
    config_cls = RewardConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_lr(trial, 1e-5, 1e-3)

    def objective(self, hp, policy, reference, norm):
        rc, rr = policy["chosen"].score, policy["rejected"].score
        losses = bradley_terry_loss(rc, rr, hp.margin)
        return ObjectiveOutput(losses.sum() / norm.sequences, pairwise_metrics(rc, rr))
