"""The value model (critic) of PPO: a sequence-classification model read at every position.

    harness run method=ppo reward=runs/reward-0001     # critic initialised from the reward model

InstructGPT initialises the value function from the reward model; without a reward model
the critic starts from the policy's own weights with a fresh scalar head.  Either way it is
an ``AutoModelForSequenceClassification`` (num_labels=1) whose score head is applied to the
decoder's hidden state at *every* position instead of only the last one, so ``V(s_t)`` for
each completion token comes out of one forward, in the same completion space as the
policy's per-token log-probs (:func:`harness.modeling.forward.completion_space`).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.data.batching import Batch
from harness.modeling.forward import completion_space


class Critic(torch.nn.Module):
    """A sequence-classification model whose score head is read at every position.

    A module of its own (rather than a function over the model's parts) so that DDP and
    accelerate wrap it like any model and synchronise its gradients."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        if not hasattr(model, "score") or not hasattr(model, model.base_model_prefix):
            raise ValueError(f"{type(model).__name__} has no per-position score head (expected a decoder body "
                             "and a 'score' layer, as Llama/Qwen/Mistral sequence classifiers have)")
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        body = getattr(self.model, self.model.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.model.score(hidden).squeeze(-1).float()


def load_critic(path: str, pad_id: int, dtype: torch.dtype = torch.float32) -> Critic:
    """A critic from a reward model directory or a causal LM's weights (fresh score head)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    model.config.pad_token_id = pad_id
    return Critic(model)


def token_values(critic: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """V(prefix) before each completion token: [rows, Lc] values and their mask.

    The value that predicts token j is read at the position whose next token is j, exactly
    where the policy's log-prob of token j is read."""
    per_position = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[:, :-1]
    return completion_space(per_position, batch.loss_mask)
