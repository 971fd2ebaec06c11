"""KTO: prospect-theoretic alignment from unpaired desirable / undesirable examples.

    harness run method=kto data.desirable_fraction=0.1 method.desirable_weight=1.33
"""

from dataclasses import dataclass
from typing import Any

from harness.core.config import ranged
from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    register_method,
    suggest_beta_lr,
)
from harness.core.losses import kto_kl_estimate, kto_loss


@dataclass
class KTOConfig:
    #: KL-penalty strength β (paper: 0.1)
    beta: float = ranged(0.1, gt=0)
    #: λ_D, weight of desirable examples; the paper keeps λ_D·n_D / (λ_U·n_U) in [1, 4/3] under imbalance
    desirable_weight: float = ranged(1.0, gt=0)
    #: λ_U, weight of undesirable examples
    undesirable_weight: float = ranged(1.0, gt=0)


@register_method
class KTO:
    name = "kto"
    paper = Paper("KTO: Model Alignment as Prospect Theoretic Optimization", "2402.01306", "Ethayarajh et al.")
    data_kind = DataKind.UNPAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = KTOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_beta_lr(trial)

    #: z0 is a statistic of the whole optimizer step: the core sums these over every
    #: micro-batch and process first (one no-grad forward of the KL rows), so that gradient
    #: accumulation and data parallelism give exactly the one-big-batch value
    step_statistics_segments = ("kl",)

    def step_statistics(self, hp, policy, reference):
        return {"kl_sum": (policy["kl"].logps - reference["kl"]).sum(), "kl_count": policy["kl"].logps.new_tensor(
            float(policy["kl"].logps.numel()))}

    def objective(self, hp, policy, reference, norm):
        comp, kl_seg = policy["completion"], policy["kl"]
        if "step:kl_sum" in reference:
            kl = (reference["step:kl_sum"] / reference["step:kl_count"]).clamp(min=0).to(comp.logps.dtype)
        else:  # a lone micro-batch (unit tests): its own mismatched pairs estimate z0
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
