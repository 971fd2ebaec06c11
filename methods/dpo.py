"""Direct Preference Optimization, and conservative DPO (label smoothing).

    harness run method=dpo method.beta=0.1
    harness run method=cdpo method.label_smoothing=0.1
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
from harness.core.losses import dpo_loss


@dataclass
class DPOConfig:
    #: KL-penalty strength β (paper: 0.1 for most experiments)
    beta: float = ranged(0.1, gt=0)
    #: ε of cDPO: assumed probability that a preference label is flipped (0 = plain DPO; 0.5 = no signal)
    label_smoothing: float = ranged(0.0, ge=0, lt=0.5)


@register_method
class DPO:
    name = "dpo"
    paper = Paper("Direct Preference Optimization: Your Language Model is Secretly a Reward Model", "2305.18290", "Rafailov et al.")
    data_kind = DataKind.PAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = DPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_beta_lr(trial)

    def objective(self, hp, policy, reference, norm):
        losses, rc, rr = dpo_loss(
            policy["chosen"].logps, policy["rejected"].logps, reference["chosen"], reference["rejected"],
            beta=hp.beta, label_smoothing=hp.label_smoothing,
        )
        return ObjectiveOutput(losses.sum() / norm.sequences, pairwise_metrics(rc, rr))


@dataclass
class CDPOConfig(DPOConfig):
    #: ε: assumed probability that a preference label is flipped (0.5 = no signal)
    label_smoothing: float = ranged(0.1, ge=0, lt=0.5)


@register_method
class CDPO(DPO):
    name = "cdpo"
    paper = Paper("A note on DPO with noisy preferences & relationship to IPO", "", "Mitchell", "https://ericmitchell.ai/cdpo.pdf")
    config_cls = CDPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {**super().search_space(trial), "method.label_smoothing": trial.suggest_float("method.label_smoothing", 0.0, 0.3)}
