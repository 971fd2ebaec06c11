"""PPO on a learned (or programmatic) reward with a per-token KL penalty: RLHF of Christiano
et al. 2017 and InstructGPT (Ouyang et al. 2022), in the form of Ziegler et al. 2019.

    harness run method=ppo reward=runs/reward-0001            # SFT base -> reward model -> PPO
    harness run method=ppo reward=gold method.adaptive_kl=true method.kl_target=2
    harness run method=rlhf                                    # the whole chain from one command

Each rollout samples completions of the cycle's prompts from the current policy; the
reward of a completion is the reward model's score at its last token minus
``kl_coef`` x the per-token KL to the SFT reference at every token (optionally adapted
towards ``kl_target`` by Ziegler et al.'s controller); a value model (initialised from the
reward model, as InstructGPT does, or from the policy) gives GAE(γ, λ) advantages,
whitened over the whole batch; the policy then takes ``epochs`` x ``minibatches`` clipped
PPO steps on the rollout while the critic fits the returns with a clipped value loss.
``ptx_coef`` > 0 mixes the NLL of SFT data into every step (PPO-ptx).
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
from harness.core.online_losses import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    global_moments,
    global_whiten,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
    ppo_value_loss,
)


@dataclass
class PPOConfig:
    #: β of the per-token KL penalty to the SFT reference (InstructGPT: 0.02); the initial value with adaptive_kl
    kl_coef: float = ranged(0.02, ge=0)
    #: Ziegler et al.'s proportional controller of β towards kl_target (nats per sequence)
    adaptive_kl: bool = False
    kl_target: float = ranged(6.0, gt=0)
    kl_horizon: float = ranged(10000.0, gt=0)
    #: GAE discount and λ
    gamma: float = ranged(1.0, ge=0, le=1)
    lam: float = ranged(0.95, ge=0, le=1)
    #: ε of the clipped ratio, and the value-function clip range
    clip_eps: float = ranged(0.2, gt=0)
    value_clip: float = ranged(0.2, gt=0)
    vf_coef: float = ranged(0.1, ge=0)
    #: optimisation passes over each rollout, and optimizer steps per pass
    epochs: int = ranged(4, ge=1, le=1000)
    minibatches: int = ranged(1, ge=1, le=4096)
    samples_per_prompt: int = ranged(1, ge=1, le=4096)
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)
    #: scale rewards by their batch standard deviation (mean kept) before GAE
    whiten_rewards: bool = False
    #: critic start: "auto" = the reward model when reward= is one (InstructGPT), else the policy
    value_init: Literal["auto", "reward", "policy"] = "auto"
    #: critic learning rate; None = train.lr
    value_lr: float | None = ranged(None, gt=0)
    #: PPO-ptx: weight of the SFT-data NLL mixed into every step (0 = plain PPO)
    ptx_coef: float = ranged(0.0, ge=0)


@register_method
class PPO:
    name = "ppo"
    paper = Paper("Training language models to follow instructions with human feedback", "2203.02155",
                  "Ouyang et al.")
    data_kind = DataKind.PROMPT
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = PPOConfig
    token_level = True

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.kl_coef": trial.suggest_float("method.kl_coef", 0.005, 0.5, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def rollout_plan(self, hp: PPOConfig) -> RolloutPlan:
        return RolloutPlan(samples_per_prompt=hp.samples_per_prompt, temperature=hp.temperature, top_p=hp.top_p,
                           max_new_tokens=hp.max_new_tokens, epochs=hp.epochs, minibatches=hp.minibatches,
                           critic=True)

    def advantages(self, hp: PPOConfig, rollout: Any, state: dict[str, Any]) -> dict[str, Any]:
        ctl: Any = (AdaptiveKLController(hp.kl_coef, hp.kl_target, hp.kl_horizon) if hp.adaptive_kl
                    else FixedKLController(hp.kl_coef))
        if "kl_controller" in state:
            ctl.load_state_dict(state["kl_controller"])
        mask, reduce = rollout.mask, rollout.all_reduce
        rewards, kl = kl_penalized_rewards(rollout.scores, rollout.logps, rollout.ref_logps, mask, ctl.value)
        if hp.whiten_rewards:
            rewards = global_whiten(rewards, mask, reduce, shift_mean=False)
        advantages, returns = gae(rewards, rollout.values, mask, hp.gamma, hp.lam)
        advantages = global_whiten(advantages, mask, reduce)
        # the controller sees the batch's mean KL per sequence, over every process
        seq_kl = masked_sum(kl, mask, dim=-1)
        ones = mask.any(-1)
        kl_mean, _ = global_moments(seq_kl.unsqueeze(-1).expand(-1, 2), ones.unsqueeze(-1).expand(-1, 2), reduce)
        n_seq = float(reduce(ones.sum().double()) if reduce else ones.sum())
        coef_used = ctl.value
        ctl.update(float(kl_mean), int(n_seq))
        state["kl_controller"] = ctl.state_dict()
        _, ret_var = global_moments(returns, mask, reduce)
        _, err_var = global_moments(returns - rollout.values, mask, reduce)
        return {
            "old_logps": rollout.logps, "old_values": rollout.values, "advantages": advantages, "returns": returns,
            "metrics": {"kl_coef": coef_used, "kl_per_sequence": float(kl_mean),
                        "explained_variance": float(1 - err_var / ret_var.clamp(min=1e-8))},
        }

    def objective(self, hp, policy, given, norm):
        seq = policy["completion"]
        lp, mask = seq.token_logps, seq.token_mask
        pg, clipped, approx_kl = ppo_policy_loss(lp, given["old_logps"], given["advantages"], mask, hp.clip_eps)
        vf, _ = ppo_value_loss(seq.values, given["old_values"], given["returns"], mask, hp.value_clip)
        # token mean over the whole optimizer step (global token count), policy and critic terms together
        loss = (masked_sum(pg, mask) + hp.vf_coef * masked_sum(vf, mask)) / norm.tokens["completion"]
        return ObjectiveOutput(loss, {
            "clip_fraction": masked_mean(clipped, mask, dim=-1).detach(),
            "approx_kl": masked_mean(approx_kl, mask, dim=-1).detach(),
            "value_loss": masked_mean(vf, mask, dim=-1).detach(),
            "policy_loss": masked_mean(pg, mask, dim=-1).detach(),
        })
