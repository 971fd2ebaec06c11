"""KTO: prospect-theoretic alignment from unpaired desirable / undesirable examples.

    harness run method=kto data.desirable_fraction=0.1 method.desirable_weight=1.33
"""

from dataclasses import dataclass
from typing import Any

from harness.losses import kto_kl_estimate, kto_loss
from harness.methods_api import DataKind, ObjectiveOutput, Paper, register_method, suggest_lr


@dataclass
class KTOConfig:
    beta: float = 0.1
    #: λ_D and λ_U; the paper keeps λ_D·n_D / (λ_U·n_U) in [1, 4/3] under imbalance
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@register_method
class KTO:
    name = "kto"
    paper = Paper("KTO: Model Alignment as Prospect Theoretic Optimization", "2402.01306", "Ethayarajh et al.")
    data_kind = DataKind.UNPAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = KTOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.beta": trial.suggest_float("method.beta", 0.01, 1.0, log=True), **suggest_lr(trial, 1e-5, 1e-3)}

    def objective(self, hp, policy, reference, norm):
        comp, kl_seg = policy["completion"], policy["kl"]
        # the micro-batch's mismatched pairs estimate the reference point z0 (as in TRL)
        kl = kto_kl_estimate(kl_seg.logps, reference["kl"])
        desirable = comp.label
        if desirable is None:
            raise ValueError("kto needs desirable labels on the completion segment")
        losses, rewards = kto_loss(
            comp.logps, reference["completion"], desirable, kl,
            beta=hp.beta, desirable_weight=hp.desirable_weight, undesirable_weight=hp.undesirable_weight,
        )
        return ObjectiveOutput(losses.sum() / norm.sequences, {
            "rewards": rewards, "share_desirable": desirable.float(), "kl": kl.expand_as(rewards),
        })
