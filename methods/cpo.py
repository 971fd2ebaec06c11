"""CPO: contrastive preference optimisation, a reference-free preference term plus NLL on chosen.

    harness run method=cpo method.beta=0.1
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
from harness.core.losses import cpo_loss, sft_loss


@dataclass
class CPOConfig:
    #: temperature β of the preference term (paper: 0.1)
    beta: float = ranged(0.1, gt=0)
    #: weight of the NLL term on the chosen response (the paper's behaviour-cloning regulariser; 0 = none)
    nll_weight: float = ranged(1.0, ge=0)


@register_method
class CPO:
    name = "cpo"
    paper = Paper("Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in Machine Translation", "2401.08417", "Xu et al.")
    data_kind = DataKind.PAIRED
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = CPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_beta_lr(trial)

    def objective(self, hp, policy, reference, norm):
        c, r = policy["chosen"], policy["rejected"]
        losses, wc, wr = cpo_loss(c.logps, r.logps, beta=hp.beta)
        nll = sft_loss(c.logps).sum() / max(norm.tokens["chosen"], 1)
        return ObjectiveOutput(losses.sum() / norm.sequences + hp.nll_weight * nll, pairwise_metrics(wc, wr))
