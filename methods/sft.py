"""Supervised fine-tuning on demonstrations (completion-only NLL): InstructGPT's first
stage, Alpaca, FLAN-style instruction tuning.

    harness run method=sft data=tatsu-lab/alpaca
"""

from dataclasses import dataclass
from typing import Any

from harness.core.contract import DataKind, ObjectiveOutput, Paper, register_method, suggest_lr
from harness.core.losses import sft_loss


@dataclass
class SFTConfig:
    """SFT has no objective hyperparameters; learning rate and schedule live in ``train``."""


@register_method
class SFT:
    name = "sft"
    paper = Paper("Training language models to follow instructions with human feedback", "2203.02155", "Ouyang et al.")
    data_kind = DataKind.SFT
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = SFTConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_lr(trial, 1e-5, 3e-3)

    def objective(self, hp, policy, reference, norm):
        seq = policy["completion"]
        losses = sft_loss(seq.logps)
        # token mean over the whole optimizer step, as one big batch would compute it
        return ObjectiveOutput(losses.sum() / max(norm.tokens["completion"], 1), {"nll_per_token": losses.detach() / seq.n_tokens.clamp(min=1)})
