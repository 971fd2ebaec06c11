"""The RLHF chain of Christiano et al. (2017) and InstructGPT (Ouyang et al. 2022) from one command:
SFT -> reward model -> PPO, each stage a run in the store, linked.

    harness run method=rlhf                                  # toy world: the base is already an SFT model
    harness run method=rlhf method.sft_steps=200 method.reward_steps=300 method.ppo.kl_coef=0.05

Stage ``sft`` (skipped when ``sft_steps`` is 0: the built-in bases are SFT models) trains on
the data world's SFT split; stage ``reward`` trains a Bradley-Terry reward model on its
preference split from the SFT model; stage ``ppo`` optimises the SFT model against that
reward model with PPO (``method.ppo.*`` are PPO's typed hyperparameters).  Each stage is
evaluated like any run (the reward model by its held-out accuracy).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.core.config import ranged
from harness.core.contract import DataKind, Paper, register_method
from methods.ppo import PPOConfig


@dataclass
class RLHFConfig:
    #: SFT steps before the reward model (0: start from the given model, already an SFT model)
    sft_steps: int = ranged(0, ge=0, le=2**31 - 1)
    #: reward-model training steps and learning rate
    reward_steps: int = ranged(200, ge=1, le=2**31 - 1)
    reward_lr: float = ranged(1e-3, gt=0)
    #: PPO's hyperparameters for the last stage
    ppo: PPOConfig = field(default_factory=PPOConfig)


@register_method
class RLHF:
    name = "rlhf"
    paper = Paper("Deep Reinforcement Learning from Human Preferences (and InstructGPT's SFT -> RM -> PPO)",
                  "1706.03741", "Christiano et al.; Ouyang et al.")
    data_kind = DataKind.PROMPT
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = RLHFConfig
    stages = ("sft", "reward", "ppo")

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.ppo.kl_coef": trial.suggest_float("method.ppo.kl_coef", 0.005, 0.5, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def pipeline(self, hp: RLHFConfig, ctx: Any) -> Any:
        policy = ctx.start
        if hp.sft_steps:
            policy = ctx.train("sft", data=None, method={"name": "sft"}, model=policy,
                               overrides={"train.max_steps": hp.sft_steps})
        rm = ctx.train("reward", data=None, method={"name": "reward"}, model=policy,
                       overrides={"train.max_steps": hp.reward_steps, "train.lr": hp.reward_lr})
        return ctx.train("ppo", data=None, method={"name": "ppo", **asdict(hp.ppo)}, model=policy,
                         overrides={"reward.source": str(rm.run_dir)}, round=1)
