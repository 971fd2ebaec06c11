"""Online AI Feedback (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback", arXiv:2402.04792): DPO / IPO / SLiC on pairs the current policy samples and an
annotator labels.

    harness run method=online-dpo reward=judge:openai:gpt-4o-mini method.annotation_budget=2000
    harness run method=online-dpo reward=gold method.loss=ipo

Every step samples two completions per prompt from the current policy; the annotator (any
pairwise judge of evaluation, or a scalar reward source comparing scores) prefers one; the
pair is trained with the offline objective against the frozen reference (the SFT model),
so the data stays on-policy.  Annotations are counted and logged; a budget stops training
cleanly when it is spent.
"""

from dataclasses import dataclass
from typing import Any, Literal

from harness.core.config import ranged
from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    RolloutPlan,
    pairwise_metrics,
    register_method,
    suggest_beta_lr,
)
from harness.core.losses import dpo_loss, ipo_loss
from harness.core.online_losses import slic_loss


@dataclass
class OnlineDPOConfig:
    beta: float = ranged(0.1, gt=0)
    #: the objective on each annotated pair: DPO (sigmoid), IPO, or SLiC's hinge
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    #: most annotations (pairs judged) for the whole run; None = unlimited
    annotation_budget: int | None = ranged(None, ge=1, le=2**31 - 1)
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)


@register_method
class OnlineDPO:
    name = "online-dpo"
    paper = Paper("Direct Language Model Alignment from Online AI Feedback", "2402.04792", "Guo et al.")
    data_kind = DataKind.PROMPT
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = OnlineDPOConfig
    #: online pairs come from a pairwise comparison (a judge, or two scalar scores)
    pairwise = True

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_beta_lr(trial)

    def rollout_plan(self, hp: OnlineDPOConfig) -> RolloutPlan:
        return RolloutPlan(samples_per_prompt=2, temperature=hp.temperature, top_p=hp.top_p,
                           max_new_tokens=hp.max_new_tokens, reward="pairwise")

    def objective(self, hp, policy, reference, norm):
        args = (policy["chosen"].logps, policy["rejected"].logps, reference["chosen"], reference["rejected"])
        if hp.loss == "ipo":
            # IPO on length-averaged log-probs, as the offline IPO adapter does
            n_c, n_r = policy["chosen"].n_tokens.clamp(min=1), policy["rejected"].n_tokens.clamp(min=1)
            losses, rc, rr = ipo_loss(args[0] / n_c, args[1] / n_r, args[2] / n_c, args[3] / n_r, beta=hp.beta)
        elif hp.loss == "hinge":
            losses, rc, rr = slic_loss(*args, beta=hp.beta)
        else:
            losses, rc, rr = dpo_loss(*args, beta=hp.beta)
        return ObjectiveOutput(losses.sum() / norm.sequences, pairwise_metrics(rc, rr))
