"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740).

    harness run method=rloo reward=gold method.k=4

``k`` completions per prompt; each one's reward is the score minus β x its sequence-level
KL to the reference (sum over tokens of log π - log π_ref); its baseline is the mean
reward of the other k - 1 completions of the same prompt, and the policy takes a
REINFORCE step on the whole sequence's log-probability: no value model, no clipping,
one update per rollout.
"""

from dataclasses import dataclass
from typing import Any

from harness.core.config import ranged
from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    RolloutPlan,
    register_method,
)
from harness.core.online_losses import global_mean, masked_sum, rloo_advantages


@dataclass
class RLOOConfig:
    #: completions per prompt (the paper compares k = 2 and 4)
    k: int = ranged(4, ge=2, le=4096)
    #: β of the sequence-level KL penalty folded into the reward
    beta: float = ranged(0.05, ge=0)
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)


@register_method
class RLOO:
    name = "rloo"
    paper = Paper("Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
                  "2402.14740", "Ahmadian et al.")
    data_kind = DataKind.PROMPT
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = RLOOConfig

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.beta": trial.suggest_float("method.beta", 0.005, 0.5, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def rollout_plan(self, hp: RLOOConfig) -> RolloutPlan:
        return RolloutPlan(samples_per_prompt=hp.k, temperature=hp.temperature, top_p=hp.top_p,
                           max_new_tokens=hp.max_new_tokens, reference_logps=hp.beta > 0)

    def advantages(self, hp: RLOOConfig, rollout: Any, state: dict[str, Any]) -> dict[str, Any]:
        rewards = rollout.scores
        metrics = {}
        if rollout.ref_logps is not None:
            seq_kl = masked_sum(rollout.logps - rollout.ref_logps, rollout.mask, dim=-1)
            rewards = rewards - hp.beta * seq_kl
            metrics["kl_per_sequence"] = global_mean(seq_kl, rollout.all_reduce)
        adv = rloo_advantages(rewards, hp.k)
        return {"advantages": adv,
                "metrics": {**metrics, "penalised_reward": global_mean(rewards, rollout.all_reduce)}}

    def objective(self, hp, policy, given, norm):
        r"""REINFORCE with the leave-one-out baseline (eq. 7):
        :math:`\mathcal{L} = -\frac{1}{N}\sum_i \big(R_i - \frac{1}{k-1}\sum_{j\ne i} R_j\big)\log\pi_\theta(y_i|x)`."""
        seq = policy["completion"]
        losses = -given["advantages"] * seq.logps
        return ObjectiveOutput(losses.sum() / norm.sequences, {"advantage": given["advantages"].detach()})
