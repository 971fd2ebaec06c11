"""Identity Preference Optimisation: a squared loss that regresses the log-ratio gap to 1/(2β).

    harness run method=ipo method.beta=0.1
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
from harness.core.losses import ipo_loss


@dataclass
class IPOConfig:
    #: the paper's τ (regularisation towards the reference); the loss regresses the gap to 1/(2τ)
    beta: float = ranged(0.1, gt=0)
    #: average log-probs over completion tokens (TRL's convention); false: summed as in the paper
    length_normalize: bool = True


@register_method
class IPO:
    name = "ipo"
    paper = Paper("A General Theoretical Paradigm to Understand Learning from Human Preferences", "2310.12036", "Azar et al.")
    data_kind = DataKind.PAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = IPOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_beta_lr(trial)

    def objective(self, hp, policy, reference, norm):
        c, r = policy["chosen"], policy["rejected"]
        if hp.length_normalize:
            pc, pr = c.mean_logps, r.mean_logps
            rc, rr = reference["chosen"] / c.n_tokens.clamp(min=1), reference["rejected"] / r.n_tokens.clamp(min=1)
        else:
            pc, pr, rc, rr = c.logps, r.logps, reference["chosen"], reference["rejected"]
        losses, wc, wr = ipo_loss(pc, pr, rc, rr, beta=hp.beta)
        return ObjectiveOutput(losses.sum() / norm.sequences, pairwise_metrics(wc, wr))
