"""Setting up an online run: reward source, reference, critic, rollout source, step count.

    harness run method=grpo reward=gold          # the runner calls setup_online() for prompt-only methods

An adapter is *online* when it consumes prompts (``data_kind = PROMPT``) and plans rollouts
(``rollout_plan``).  :func:`setup_online` builds what its rollout stage needs from the
run spec, once, before the loop starts; the loop itself is the same as for offline methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from harness.core.config import RunSpec
from harness.core.contract import DataKind, MethodAdapter, RolloutPlan
from harness.data.batching import tokenize_records
from harness.data.load import load_records
from harness.modeling import peft_setup
from harness.modeling.critic import Critic, load_critic
from harness.modeling.forward import ForwardOptions, configure
from harness.modeling.generation import resolve_model_dir
from harness.training.rewards import build_source, parse_source
from harness.training.rollout import RolloutSource
from harness.worlds.base import spec_world


def is_online(adapter: MethodAdapter) -> bool:
    return adapter.data_kind == DataKind.PROMPT and hasattr(adapter, "rollout_plan")


@dataclass
class OnlineSetup:
    plan: RolloutPlan
    source: RolloutSource
    reward: Any
    critic: Critic | None
    total_steps: int
    critic_init: str | None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reward_source": self.reward.identity, "reward_calls": self.reward.calls,
                               "samples_per_prompt": self.plan.samples_per_prompt, "updates_per_rollout": self.plan.updates}
        for key in ("annotations", "cache_hits"):
            if hasattr(self.reward, key):
                out[key] = getattr(self.reward, key)
        if self.critic_init:
            out["critic_init"] = self.critic_init
        return out


def critic_init_path(spec: RunSpec, policy_path: str) -> str:
    """InstructGPT initialises the value function from the reward model; else the policy."""
    choice = getattr(spec.method.hp, "value_init", "auto")
    kind, arg = parse_source(spec.reward.source)
    if choice == "reward" or (choice == "auto" and kind == "reward_model"):
        if kind != "reward_model":
            raise ValueError(f"method.value_init=reward needs reward= to be a reward model, got {spec.reward.source!r}")
        return resolve_model_dir(arg)
    return policy_path


def setup_online(prep: Any, spec: RunSpec, model: Any, accelerator: Any,
                 load_reference: Callable[[], Any]) -> OnlineSetup:
    """Everything the rollout stage needs; ``load_reference`` loads the frozen reference model
    (called only when the policy is not a PEFT adapter, whose base is the reference)."""
    adapter, hp, t = prep.adapter, spec.method.hp, spec.train
    plan: RolloutPlan = adapter.rollout_plan(hp)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and t.max_prompt_length + plan.max_new_tokens > limit:
        raise ValueError(f"train.max_prompt_length ({t.max_prompt_length}) + method.max_new_tokens "
                         f"({plan.max_new_tokens}) exceeds the model's {limit} positions")
    device = str(accelerator.device)
    reward = build_source(spec, device, budget=getattr(hp, "annotation_budget", None))

    reference: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    if plan.reference_logps or plan.reward == "pairwise":
        if peft_setup.is_adapter_model(model):
            @contextlib.contextmanager
            def reference() -> Iterator[Any]:
                with peft_setup.reference_context(model):
                    yield model
        else:
            frozen = load_reference().to(accelerator.device).eval()
            frozen.requires_grad_(False)
            configure(frozen, ForwardOptions(t.logprobs, t.packing, t.share_prompts))

            @contextlib.contextmanager
            def reference() -> Iterator[Any]:
                yield frozen

    critic = None
    init = None
    if plan.critic:
        init = critic_init_path(spec, prep.model_path)
        critic = load_critic(init, prep.tokenizer.pad_token_id).to(accelerator.device)

    aux, coef = [], float(getattr(hp, "ptx_coef", 0.0) or 0.0)
    if coef > 0:
        world = spec_world(spec)
        records = load_records(str(world.data_path(DataKind.SFT)), "train", DataKind.SFT).records
        aux = tokenize_records(records, prep.tokenizer, DataKind.SFT, t.max_length, t.max_prompt_length)

    # the rollout's no-grad forwards run in the training precision
    autocast = (torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)
                if t.precision == "bf16" else None)
    source = RolloutSource(
        adapter=adapter, hp=hp, plan=plan, prompts=[r["prompt"] for r in prep.train_records],
        tokenizer=prep.tokenizer, reward=reward, accelerator=accelerator, batch_size=t.batch_size,
        grad_accum=t.grad_accum, seed=spec.seed, max_prompt_length=t.max_prompt_length, reference=reference,
        autocast=autocast, aux_examples=aux, aux_coef=coef, engine=t.rollout_engine,
    )
    total = RolloutSource.steps_for(len(prep.train_records), plan, t.batch_size, t.grad_accum,
                                    accelerator.num_processes, t.epochs, t.max_steps)
    return OnlineSetup(plan, source, reward, critic, total, init)
