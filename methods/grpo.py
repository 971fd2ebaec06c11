"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300).

    harness run method=grpo reward=gold method.group_size=8
    harness run method=grpo method.scale_rewards=false method.loss_aggregation=dr_grpo   # Dr. GRPO

``group_size`` completions per prompt; each completion's advantage is its reward minus
the group's mean (divided by the group's standard deviation unless ``scale_rewards=false``,
the Dr. GRPO variant of Liu et al. 2025), shared by all its tokens; the loss is PPO's
clipped surrogate plus β x the k3 estimate of KL to the reference, aggregated per sequence
(the paper), per token over the step (DAPO) or by a constant length (Dr. GRPO).
No value model.
"""

from dataclasses import dataclass
from typing import Any, Literal

from harness.core.config import ranged
from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    RolloutPlan,
    register_method,
)
from harness.core.online_losses import aggregate_tokens, global_mean, grpo_advantages, grpo_loss, masked_mean


@dataclass
class GRPOConfig:
    #: completions per prompt (G)
    group_size: int = ranged(8, ge=2, le=4096)
    #: β of the k3 KL-to-reference term (paper: 0.04; 0 drops the reference)
    beta: float = ranged(0.04, ge=0)
    clip_eps: float = ranged(0.2, gt=0)
    #: DAPO's decoupled upper clip bound; None = clip_eps
    clip_eps_high: float | None = ranged(None, gt=0)
    #: divide advantages by the group's reward std (GRPO); false = Dr. GRPO
    scale_rewards: bool = True
    #: "sequence": mean over each completion's tokens, then over completions (the paper);
    #: "token": every token of the step weighs the same (DAPO); "dr_grpo": sum / max_new_tokens
    loss_aggregation: Literal["sequence", "token", "dr_grpo"] = "sequence"
    #: policy updates per rollout (μ)
    iterations: int = ranged(1, ge=1, le=1000)
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)

    def validate(self) -> None:
        if self.clip_eps_high is not None and self.clip_eps_high < self.clip_eps:
            raise ValueError(f"clip_eps_high ({self.clip_eps_high}) must be >= clip_eps ({self.clip_eps})")


@register_method
class GRPO:
    name = "grpo"
    paper = Paper("DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models (GRPO)",
                  "2402.03300", "Shao et al.")
    data_kind = DataKind.PROMPT
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = GRPOConfig
    token_level = True

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.beta": trial.suggest_float("method.beta", 0.001, 0.2, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def rollout_plan(self, hp: GRPOConfig) -> RolloutPlan:
        return RolloutPlan(samples_per_prompt=hp.group_size, temperature=hp.temperature, top_p=hp.top_p,
                           max_new_tokens=hp.max_new_tokens, epochs=hp.iterations, reference_logps=hp.beta > 0)

    def advantages(self, hp: GRPOConfig, rollout: Any, state: dict[str, Any]) -> dict[str, Any]:
        adv = grpo_advantages(rollout.scores, rollout.group_size, scale_by_std=hp.scale_rewards)
        out: dict[str, Any] = {"advantages": adv, "old_logps": rollout.logps,
                               "metrics": {"zero_advantage_share": global_mean((adv == 0).float(), rollout.all_reduce)}}
        if rollout.ref_logps is not None:
            out["ref_logps"] = rollout.ref_logps
        return out

    def objective(self, hp, policy, given, norm):
        seq = policy["completion"]
        lp, mask = seq.token_logps, seq.token_mask
        # one update per rollout: the ratio is taken to the detached current policy (exactly on-policy)
        old = given["old_logps"] if hp.iterations > 1 else None
        per_token, kl, clipped = grpo_loss(lp, old, given.get("ref_logps"), given["advantages"], mask,
                                           hp.clip_eps, hp.clip_eps_high, hp.beta)
        per_seq = aggregate_tokens(per_token, mask, hp.loss_aggregation, hp.max_new_tokens)
        denom = norm.tokens["completion"] if hp.loss_aggregation == "token" else norm.sequences
        return ObjectiveOutput(per_seq.sum() / denom, {
            "kl": masked_mean(kl, mask, dim=-1).detach(),
            "clip_fraction": masked_mean(clipped, mask, dim=-1).detach(),
            "advantage": given["advantages"].detach(),
        })
