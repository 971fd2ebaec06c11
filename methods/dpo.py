"""Direct Preference Optimization, and conservative DPO (label smoothing).

    harness run method=dpo method.beta=0.1
    harness run method=cdpo method.label_smoothing=0.1
"""

from dataclasses import dataclass
from typing import Any

from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    pairwise_metrics,
    register_method,
    require_positive,
    suggest_beta_lr,
)
from harness.core.losses import dpo_loss


@dataclass
class DPOConfig:
    #: KL-penalty strength β (paper: 0.1 for most experiments)
    beta: float = 0.1
    #: ε of cDPO: assumed probability that a preference label is flipped
    label_smoothing: float = 0.0

    def validate(self) -> None:
        require_positive(beta=self.beta)
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


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
    label_smoothing: float = 0.1


@register_method
class CDPO(DPO):
    name = "cdpo"
    paper = Paper("A note on DPO with noisy preferences & relationship to IPO", "", "Mitchell", "https://ericmitchell.ai/cdpo.pdf")
    config_cls = CDPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {**super().search_space(trial), "method.label_smoothing": trial.suggest_float("method.label_smoothing", 0.0, 0.3)}
