"""The rollout stage of online methods: generate -> score -> old/reference log-probs -> advantages.

    harness run method=grpo reward=gold method.group_size=8
    harness run method=ppo reward=runs/reward-0001

:class:`RolloutSource` is the online counterpart of :class:`harness.training.loop.OfflineSource`:
the training loop asks it for each optimizer step's micro-batches, and it answers from a
rollout buffer that it refills every ``plan.updates`` steps.  A refill, for this process's
share of the cycle's prompts:

1. **generate** ``samples_per_prompt`` completions per prompt with the current policy
   (:func:`harness.modeling.generation.generate_batches`: a batched decode with the KV cache,
   each prompt's prefill shared by its samples, finished rows dropped; ``train.rollout_engine=hf``
   calls transformers' ``generate`` instead), one decode per chunk of ``batch_size`` prompts,
   seeded by (seed, cycle, chunk);
2. **score** them with the run's reward source (:mod:`harness.training.rewards`); pairwise
   methods (OAIF) turn the two samples of a prompt into a (chosen, rejected) pair by the
   annotator's preference;
3. compute the **old policy's** per-token log-probs (in fp32 read while sampling, from the
   logits at temperature 1 the decode computes anyway; under bf16 autocast one forward), the
   **reference's** (the starting weights: a frozen copy, or the base with the adapter disabled
   under PEFT) and, with a critic, the **values**, all in completion space (entry j = the j-th
   completion token); the forwards compute a prompt once for all its samples
   (:mod:`harness.modeling.forward`'s prompt sharing);
4. hand them to the method's ``advantages`` (scalar rewards) and keep the per-sample tensors.

Each optimizer step of the cycle then takes one minibatch of the buffer, split into
``grad_accum`` micro-batches, with global counts (all processes) for the objective's
normalisation.  With one minibatch per pass (GRPO, RLOO, OAIF, PPO with ``minibatches=1``) a
step uses the whole rollout and micro-batch k is chunk k; with several, each pass reshuffles
the process's samples (seeded) into minibatches.

**The process layout does not change the numbers.**  A chunk is the unit of everything
computed from a rollout: its own seed and decode, its own forward batches, its own micro-batch
(one minibatch per pass).  A chunk's samples, log-probs and micro-batch loss are therefore the
same computation, to the bit, whether one process holds all chunks or each process one (only the
sum of the micro-batches' gradients rounds differently: accumulated here, all-reduced there):
nothing of a chunk is batched with another chunk, whose rows would change its rounding -- and with prompt
sharing and the batched decode, per-row results do depend on what else is in the batch, in the
last bits (enough for Adam to show it in near-zero gradients, and for a sample to change where a
draw falls on a near-tie).  ``tests/test_multiprocess.py`` checks 2 processes == 1.  Generation, scoring and optimisation
stay separate parts; their times are logged separately (``time/generation_s``, ...).
The buffer and the method's state (e.g. an adaptive KL coefficient) are saved with every
checkpoint, so resuming mid-cycle continues with the same samples.
"""

from __future__ import annotations

import contextlib
import random
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from harness.core.contract import MethodAdapter, Normalizer, Rollout, RolloutPlan
from harness.data.batching import Batch, collate
from harness.modeling.critic import token_values
from harness.modeling.forward import forward_segments
from harness.modeling.generation import Completion, SamplingParams, generate_batches, prompt_text
from harness.modeling.logprobs import eval_mode
from harness.training.loop import StepBatches, StopTraining, step_examples
from harness.training.rewards import AnnotationBudgetExhausted


def disable_dropout(model: Any) -> None:
    """Online objectives compare log-probs of the same tokens under the sampling policy and the
    policy being trained; dropout would make those differ at identical weights."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _seed(*parts: Any) -> int:
    """A stable 32-bit seed from parts (Python's hash of a str changes between processes)."""
    return zlib.crc32(repr(parts).encode())


def _example(prompt_ids: list[int], token_ids: list[int], idx: int) -> dict[str, Any]:
    return {"idx": idx, "segments": {"completion": {"input_ids": prompt_ids + token_ids, "prompt_len": len(prompt_ids)}}}


class RolloutSource:
    """Step batches for online methods (module docstring)."""

    def __init__(
        self, *, adapter: MethodAdapter, hp: Any, plan: RolloutPlan, prompts: list[Any], tokenizer: Any,
        reward: Any, accelerator: Any, batch_size: int, grad_accum: int, seed: int, max_prompt_length: int,
        reference: Callable[[], contextlib.AbstractContextManager[Any]] | None, autocast: Any,
        gen_batch_size: int = 64, aux_examples: list[dict[str, Any]] | None = None, aux_coef: float = 0.0,
        engine: str = "auto",
    ) -> None:
        self.adapter, self.hp, self.plan = adapter, hp, plan
        self.prompts = prompts
        self.tok = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.reward = reward
        self.acc = accelerator
        self.P, self.rank = accelerator.num_processes, accelerator.process_index
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.max_prompt_length = max_prompt_length
        self.reference = reference
        self.autocast = autocast
        self.gen_batch_size = gen_batch_size
        self.aux_examples, self.aux_coef = aux_examples or [], aux_coef
        #: generate_batches' engine: "auto" (one batched decode per rollout) or "hf" (generate per chunk)
        self.engine = engine
        #: prompts of one optimizer step on this process, and of one rollout
        self.step_prompts = batch_size * grad_accum
        self.rollout_prompts = self.step_prompts * plan.minibatches
        self.model: Any = None
        self.critic: Any = None
        #: the method's own state across rollouts (saved in checkpoints)
        self.state: dict[str, Any] = {}
        self.buffer: dict[str, Any] | None = None

    # ---- loop protocol

    def bind(self, model: Any, critic: Any) -> None:
        self.model, self.critic = model, critic
        disable_dropout(model)
        if critic is not None:
            disable_dropout(critic)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "buffer": self.buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state.get("state") or {})
        self.buffer = state.get("buffer")

    @staticmethod
    def steps_for(n_prompts: int, plan: RolloutPlan, batch_size: int, grad_accum: int, processes: int,
                  epochs: int, max_steps: int | None) -> int:
        per_rollout = batch_size * grad_accum * processes * plan.minibatches
        if n_prompts < per_rollout:
            raise ValueError(f"the prompt set has {n_prompts} prompts, fewer than one rollout needs "
                             f"({batch_size} x {grad_accum} x {processes} processes x {plan.minibatches} minibatches)")
        return max_steps if max_steps is not None else epochs * (n_prompts // per_rollout) * plan.updates

    def step(self, step: int) -> StepBatches:
        cycle, u = divmod(step, self.plan.updates)
        outside = 0.0
        if self.buffer is None or self.buffer["cycle"] != cycle:
            t0 = time.perf_counter()
            try:
                self.buffer = self._rollout(cycle)
            except AnnotationBudgetExhausted as e:
                raise StopTraining(str(e)) from None
            outside = time.perf_counter() - t0
        buf = self.buffer
        epoch, mb = divmod(u, self.plan.minibatches)
        spans = buf.get("chunks")  # absent from buffers checkpointed before chunks were recorded
        if self.plan.minibatches == 1 and spans is not None and len(spans) == self.grad_accum:
            # a step uses the whole rollout: micro-batch k is chunk k, on any process layout (module docstring)
            micro = [list(range(lo, hi)) for _, lo, hi in spans]
        else:
            n = len(buf["examples"])
            order = list(range(n))
            random.Random(_seed(self.seed, cycle, epoch, self.rank)).shuffle(order)
            per_mb = n // self.plan.minibatches
            chosen = order[mb * per_mb:(mb + 1) * per_mb]
            per_micro = max(len(chosen) // self.grad_accum, 1)
            micro = [chosen[i * per_micro:(i + 1) * per_micro] for i in range(self.grad_accum)]
        batches: list[Batch] = []
        given: list[dict[str, torch.Tensor] | None] = []
        aux: list[Batch] = []
        segs = buf["segments"]
        local_tokens = {s: 0 for s in segs}
        for k, m in enumerate(micro):
            b = collate([buf["examples"][j] for j in m], self.pad_id, segs)
            batches.append(b)
            for s in segs:
                local_tokens[s] += b.n_tokens(s)
            idx = torch.tensor(m, dtype=torch.long)
            g: dict[str, torch.Tensor] = {}
            for key, v in buf["given"].items():
                v = v[idx]
                if v.dim() == 2:  # per-token, completion space: as wide as this micro-batch's longest completion
                    v = v[:, :int(b.loss_mask[:, 1:].sum(-1).max())]
                g[key] = v
            given.append(g)
            if self.aux_examples:
                aux.append(self._aux_batch(step, k))
        counts = torch.tensor([float(sum(len(m) for m in micro))] + [float(local_tokens[s]) for s in segs]
                              + [float(sum(b.n_tokens("completion") for b in aux))], dtype=torch.float64)
        if self.P > 1:
            counts = self.acc.reduce(counts.to(self.acc.device), reduction="sum").cpu()
        norm = Normalizer(sequences=int(counts[0]), tokens={s: int(counts[1 + i]) for i, s in enumerate(segs)})
        norm.tokens["aux"] = int(counts[-1])
        return StepBatches(batches, given, norm, metrics=dict(buf["metrics"]), outside_s=outside, aux=aux,
                           aux_coef=self.aux_coef)

    # ---- the rollout

    def _aux_batch(self, step: int, k: int) -> Batch:
        rng = random.Random(_seed(self.seed, step, k, self.rank, "aux"))
        picks = [self.aux_examples[rng.randrange(len(self.aux_examples))] for _ in range(self.batch_size)]
        return collate(picks, self.pad_id, ("completion",))

    def _my_chunks(self, cycle: int) -> list[tuple[int, list[Any]]]:
        """This process's prompts of the cycle in chunks of ``batch_size`` prompts, each with its
        index among the cycle's chunks.  A chunk is sampled with its own seed, so how the
        chunks are spread over processes and micro-batches does not change the samples."""
        per_rollout = self.rollout_prompts * self.P
        idx = step_examples(len(self.prompts), per_rollout, self.seed, cycle)
        first = self.rank * self.rollout_prompts // self.batch_size
        return [(first + c, [self.prompts[i] for i in idx[lo:lo + self.batch_size]])
                for c, lo in enumerate(range(self.rank * self.rollout_prompts, (self.rank + 1) * self.rollout_prompts,
                                             self.batch_size))]

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.P == 1:
            return x
        return self.acc.reduce(x.to(self.acc.device).contiguous(), reduction="sum").to(x.device)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """No-grad forwards of the rollout, in the training precision; eval_mode keeps quantised
        (bitsandbytes) layers from re-packing their weights on CPU."""
        with contextlib.ExitStack() as stack:
            for m in (self.model, self.critic):
                if m is not None:
                    stack.enter_context(eval_mode(m))
            stack.enter_context(torch.no_grad())
            if self.autocast is not None:
                stack.enter_context(self.autocast)
            yield

    def _spans(self, chunk_spans: list[tuple[int, int, int]]) -> Iterator[tuple[int, int]]:
        """Forward batches: each chunk's rows on their own (at most ``gen_batch_size`` at a time),
        never two chunks' rows together (see the module docstring)."""
        for _, lo, hi in chunk_spans:
            for a in range(lo, hi, self.gen_batch_size):
                yield a, min(a + self.gen_batch_size, hi)

    def _token_logps(self, model: Any, examples: list[dict[str, Any]], width: int,
                     chunk_spans: list[tuple[int, int, int]]) -> torch.Tensor:
        out = torch.zeros(len(examples), width)
        for lo, hi in self._spans(chunk_spans):
            b = collate(examples[lo:hi], self.pad_id, ("completion",)).to(self.acc.device)
            seq = forward_segments(model, b, "causal_lm", tokens=True)["completion"]
            assert seq.token_logps is not None
            out[lo:hi, :seq.token_logps.shape[1]] = seq.token_logps.float().cpu()
        return out

    def _values(self, examples: list[dict[str, Any]], width: int, chunk_spans: list[tuple[int, int, int]]) -> torch.Tensor:
        out = torch.zeros(len(examples), width)
        for lo, hi in self._spans(chunk_spans):
            b = collate(examples[lo:hi], self.pad_id, ("completion",)).to(self.acc.device)
            v, _ = token_values(self.critic, b)
            out[lo:hi, :v.shape[1]] = v.float().cpu()
        return out

    def _sampling_logps_exact(self) -> bool:
        """Are the log-probs read while sampling (the model's logits at temperature 1, through the
        key/value cache) the old policy's log-probs a forward would give, to rounding?  In fp32
        (no autocast, fp32 weights, no quantised layers): they agree to ~3e-6
        (tests/test_online.py); under bf16 the cached and the full forward round differently (~1e-2)."""
        if self.autocast is not None:
            return False
        for m in self.model.modules():
            if type(m).__module__.startswith("bitsandbytes"):
                return False
        return all(p.dtype == torch.float32 for p in self.model.parameters() if p.is_floating_point())

    def _rollout(self, cycle: int) -> dict[str, Any]:
        plan = self.plan
        t0 = time.perf_counter()
        prompts: list[Any] = []
        comps: list[Completion] = []
        # each chunk of batch_size prompts: its own seed and its own decode (merge=False), so its
        # samples do not depend on the chunks this process also holds (module docstring)
        chunks = self._my_chunks(cycle)
        params = SamplingParams(max_new_tokens=plan.max_new_tokens, temperature=plan.temperature, top_p=plan.top_p,
                                num_return_sequences=plan.samples_per_prompt)
        with self.autocast if self.autocast is not None else contextlib.nullcontext():
            # the model's forward already runs under this autocast (accelerate's wrapper: the same
            # numbers); one region around the whole decode keeps its weight casts for every step
            sampled = generate_batches(self.model, self.tok, [(cp, _seed(self.seed, cycle, chunk))
                                                              for chunk, cp in chunks],
                                       params, max_prompt_length=self.max_prompt_length,
                                       engine=self.engine,  # type: ignore[arg-type]
                                       logprobs=plan.reward != "pairwise" and self._sampling_logps_exact(),
                                       merge=False)
        spans = []  # (chunk, first example, end): examples are laid out chunk after chunk
        for (chunk, chunk_prompts), outs in zip(chunks, sampled, strict=True):
            spans.append((chunk, len(comps), len(comps) + len(outs)))
            for c in outs:
                c.prompt_index += len(prompts)
                comps.append(c)
            prompts += chunk_prompts
        t_gen = time.perf_counter() - t0
        k = plan.samples_per_prompt
        texts = [c.text for c in comps]
        instr = [prompt_text(prompts[c.prompt_index]) for c in comps]
        examples = [_example(c.prompt_ids, c.token_ids, i) for i, c in enumerate(comps)]
        width = max(c.n_tokens for c in comps)
        t1 = time.perf_counter()
        metrics: dict[str, float] = {}
        if plan.reward == "pairwise":
            buffer = self._pairs(cycle, comps, instr, texts, examples, metrics, spans)
        else:
            scores = torch.tensor(self.reward.score(instr, texts), dtype=torch.float32)
            t_score = time.perf_counter() - t1
            with self._eval_mode():
                if all(c.logprobs is not None for c in comps):  # read while sampling: no forward
                    logps = torch.zeros(len(comps), width)
                    for i, c in enumerate(comps):
                        logps[i, :c.n_tokens] = torch.tensor(c.logprobs)
                else:
                    logps = self._token_logps(self.model, examples, width, spans)
                ref_logps = None
                if plan.reference_logps and self.reference is not None:
                    with self.reference() as ref_model:
                        ref_logps = self._token_logps(ref_model, examples, width, spans)
                values = self._values(examples, width, spans) if self.critic is not None else None
            mask = torch.zeros(len(comps), width, dtype=torch.bool)
            for i, c in enumerate(comps):
                mask[i, :c.n_tokens] = True
            rollout = Rollout(scores=scores, mask=mask, logps=logps * mask, ref_logps=None if ref_logps is None else
                              ref_logps * mask, values=None if values is None else values * mask, group_size=k,
                              all_reduce=self._all_reduce)
            given = self.adapter.advantages(self.hp, rollout, self.state)  # type: ignore[attr-defined]
            metrics.update({f"rollout/{m}": float(v) for m, v in given.pop("metrics", {}).items()})
            buffer = {"examples": examples, "given": given, "segments": ("completion",), "chunks": spans}
            self._sample_metrics(scores, logps, ref_logps, mask, metrics)
            metrics["time/scoring_s"] = t_score
        n_tok = sum(c.n_tokens for c in comps)
        metrics.update({
            "time/generation_s": t_gen, "time/rollout_s": time.perf_counter() - t0,
            "rollout/generation_tokens_per_s": n_tok / max(t_gen, 1e-9),
            "rollout/response_length": self._global_mean(torch.tensor([float(n_tok)]), len(comps)),
            "rollout/finished_share": self._global_mean(torch.tensor(
                [float(sum(c.finish_reason != "length" for c in comps))]), len(comps)),
        })
        calls = getattr(self.reward, "annotations", None)
        if calls is not None:
            metrics["rollout/annotations"] = float(calls)
        buffer.update({"cycle": cycle, "metrics": metrics})
        return buffer

    def _global_mean(self, total: torch.Tensor, n: int) -> float:
        both = self._all_reduce(torch.tensor([float(total.sum()), float(n)], dtype=torch.float64))
        return float(both[0] / max(float(both[1]), 1.0))

    def _sample_metrics(self, scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor | None,
                        mask: torch.Tensor, metrics: dict[str, float]) -> None:
        n_tok = mask.sum()
        s = self._all_reduce(torch.stack([scores.sum(), (scores ** 2).sum(), torch.tensor(float(len(scores))),
                                          -(logps * mask).sum(), n_tok.float()]).double())
        mean = float(s[0] / s[2])
        metrics["rollout/reward_mean"] = mean
        metrics["rollout/reward_std"] = float(max(float(s[1] / s[2]) - mean * mean, 0.0) ** 0.5)
        # the sampled estimate of the policy's entropy: E[-log pi(y_t)] over the sampled tokens
        metrics["rollout/entropy"] = float(s[3] / s[4].clamp(min=1))
        if ref_logps is not None:
            kl = self._all_reduce(torch.stack([((logps - ref_logps) * mask).sum(), n_tok.float()]).double())
            metrics["rollout/kl_per_token"] = float(kl[0] / kl[1].clamp(min=1))

    def _pairs(self, cycle: int, comps: list[Any], instr: list[str], texts: list[str],
               examples: list[dict[str, Any]], metrics: dict[str, float],
               spans: list[tuple[int, int, int]]) -> dict[str, Any]:
        """OAIF: the annotator picks between the two samples of each prompt; ties go to a seeded coin."""
        if self.plan.samples_per_prompt != 2:
            raise ValueError("a pairwise rollout samples exactly 2 completions per prompt")
        a, b = list(range(0, len(comps), 2)), list(range(1, len(comps), 2))
        t1 = time.perf_counter()
        prefs = self.reward.compare([instr[i] for i in a], [texts[i] for i in a], [texts[j] for j in b])
        metrics["time/scoring_s"] = time.perf_counter() - t1
        pairs: list[dict[str, Any]] = []
        ties = 0
        base = self.rank * self.rollout_prompts
        for n, (i, j, p) in enumerate(zip(a, b, prefs)):
            if p == 0.5:  # a coin seeded by the prompt's place in the cycle: the same on any process layout
                ties += 1
                p = float(random.Random(_seed(self.seed, cycle, base + n, "tie")).random() < 0.5)
            win, lose = (i, j) if p > 0.5 else (j, i)
            seg = {"chosen": examples[win]["segments"]["completion"], "rejected": examples[lose]["segments"]["completion"]}
            pairs.append({"idx": n, "segments": seg, "winner": win})
        # pair n comes from samples 2n and 2n+1: a chunk's pairs are the halves of its sample span
        pair_spans = [(c, lo // 2, hi // 2) for c, lo, hi in spans]
        with self._eval_mode():
            ref = {s: torch.zeros(len(pairs)) for s in ("chosen", "rejected")}
            if self.reference is not None:
                with self.reference() as ref_model:
                    for lo, hi in self._spans(pair_spans):
                        bt = collate(pairs[lo:hi], self.pad_id, ("chosen", "rejected"))
                        out = forward_segments(ref_model, bt.to(self.acc.device), "causal_lm")
                        for s in ("chosen", "rejected"):
                            ref[s][lo:hi] = out[s].logps.float().cpu()
        chosen_len = torch.tensor([float(len(texts[int(p_["winner"])])) for p_ in pairs])
        metrics["rollout/tie_share"] = self._global_mean(torch.tensor([float(ties)]), len(pairs))
        metrics["rollout/chosen_chars"] = self._global_mean(chosen_len, len(pairs))
        return {"examples": pairs, "given": ref, "segments": ("chosen", "rejected"), "chunks": pair_spans}
