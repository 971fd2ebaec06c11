"""Sampling completions from a causal LM: the generation engine shared by evaluation and
online methods (generate -> judge -> train).

    harness eval runs/dpo-0001            # evaluation samples through :func:`generate`

or from Python::

    model, tok = load_causal_lm("runs/dpo-0001")          # a run dir, final/, adapter dir or hub id
    outs = generate(model, tok, ["Tell me about the park."], SamplingParams(temperature=0.7, seed=1))
    outs[0].text, outs[0].n_tokens, outs[0].finish_reason

Prompts are strings (one user turn) or chat message lists, rendered with the tokenizer's
chat template exactly as training renders them (:func:`harness.data.batching.render_prompt`).
Batches are LEFT-padded so every row's next token follows its own last prompt token.
Sampling is seeded per batch inside a forked RNG, so the same prompts, parameters, batch
size and seed give the same completions, and the caller's RNG state is left untouched.
Completions are returned as text (special tokens removed, cut before the first stop
string) with the generated token ids that produced them, so log-probabilities of exactly
those tokens can be scored afterwards (:func:`completion_logprobs`, used for KL).

An optional vLLM backend (:func:`generate_vllm`) serves the same call from a model
directory when ``vllm`` is importable and CUDA is available; it is never required.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from harness.data.batching import render_prompt
from harness.modeling.forward import sequence_logps
from harness.modeling.logprobs import eval_mode, unwrap_model
from harness.worlds.base import find_base_model

Prompt = str | list[dict[str, str]]
FinishReason = Literal["eos", "stop", "length"]

#: files that make a directory a peft adapter rather than full weights
ADAPTER_CONFIG = "adapter_config.json"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.  ``temperature=0`` is greedy decoding; ``top_k=0`` and ``top_p=1``
    switch those filters off (transformers would otherwise apply its default top_k=50)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1
    #: strings that end a completion (not included in the text), like OpenAI's ``stop``
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.temperature == 0 and self.num_return_sequences > 1:
            raise ValueError("greedy decoding (temperature=0) gives one answer per prompt; use num_return_sequences=1")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled completion of prompt ``prompt_index`` (``sample_index`` of its samples)."""

    prompt_index: int
    sample_index: int
    text: str
    #: prompt token ids the completion was conditioned on (after truncation)
    prompt_ids: list[int] = field(repr=False)
    #: generated ids up to and including the EOS, or up to the token that completed a stop string
    token_ids: list[int] = field(repr=False)
    finish_reason: FinishReason = "length"
    #: log-prob of each of ``token_ids`` under the model's own distribution (its logits at
    #: temperature 1, whatever the sampling temperature), read while sampling; only from
    #: :func:`generate_batches` with ``logprobs=True`` and the batched engine, else None
    logprobs: list[float] | None = field(default=None, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


# --------------------------------------------------------------------------- prompts


def as_messages(prompt: Prompt, where: str = "prompt") -> list[dict[str, str]]:
    """A string becomes one user turn; a message list is checked and returned."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: expected a string or a non-empty list of chat messages, got {type(prompt).__name__}")
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}[{j}]: expected {{'role': str, 'content': str}}, got {m!r}")
    return prompt


def prompt_text(prompt: Prompt) -> str:
    """The instruction as a judge reads it: the text of a one-turn prompt, else the turns labelled by role."""
    msgs = as_messages(prompt)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], max_prompt_length: int | None = None, chat: bool = True
) -> list[list[int]]:
    """Token ids of each prompt: chat-rendered (or raw text with ``chat=False``), left-truncated."""
    out = []
    for i, p in enumerate(prompts):
        if chat:
            text = render_prompt(tokenizer, as_messages(p, f"prompts[{i}]"))
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not isinstance(p, str):
                raise ValueError(f"prompts[{i}]: chat=False needs plain strings, got {type(p).__name__}")
            ids = tokenizer(p)["input_ids"]
        if not ids:
            raise ValueError(f"prompts[{i}] encodes to no tokens")
        if max_prompt_length is not None:
            ids = ids[-max_prompt_length:]  # keep the end: the instruction nearest the answer
        out.append(list(ids))
    return out


# --------------------------------------------------------------------------- HF generate


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (cfg_eos, tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.append(v)
        elif isinstance(v, (list, tuple)):
            ids.extend(int(x) for x in v)
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer defines an EOS token")
    return list(dict.fromkeys(ids))


def _pad_id(tokenizer: Any, eos: list[int]) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos[0]


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def _finish(
    tokenizer: Any, new_ids: list[int], eos: set[int], pad_id: int, stop: tuple[str, ...]
) -> tuple[str, list[int], FinishReason]:
    """Cut one generated row at EOS / a stop string; text excludes both."""
    cut = len(new_ids)
    reason: FinishReason = "length"
    for j, t in enumerate(new_ids):
        if t in eos:
            cut, reason = j + 1, "eos"
            break
    ids = new_ids[:cut]
    body = ids[:-1] if reason == "eos" else ids
    # a row ended by a stop string is padded by generate while others go on; those pads were never sampled
    if stop and reason == "length" and pad_id not in eos:
        while body and body[-1] == pad_id:
            body = body[:-1]
    text = tokenizer.decode(body, skip_special_tokens=True)
    if stop:
        hits = [(text.find(s), s) for s in stop if s in text]
        if hits:
            pos, _ = min(hits)
            text = text[:pos]
            # the shortest token prefix whose text reaches the stop string is what was sampled
            for k in range(1, len(body) + 1):
                if any(s in tokenizer.decode(body[:k], skip_special_tokens=True) for s in stop):
                    ids = body[:k]
                    break
            reason = "stop"
    return text.strip(), list(ids), reason


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    params: SamplingParams | None = None,
    *,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
    chat: bool = True,
) -> list[Completion]:
    """Sample ``params.num_return_sequences`` completions per prompt with HF ``generate``.

    Returns them flat, ordered by prompt then sample.  The model is put in eval mode for
    the call and restored afterwards.
    """
    params = params or SamplingParams()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_length, chat)
    gen_cfg, eos, pad_id = _generation_config(model, tokenizer, params)
    device = next(model.parameters()).device
    # length-sorted batches waste less compute on padding; the order is a pure function of the prompts
    order = sorted(range(len(prompts)), key=lambda i: (len(prompt_ids[i]), i))
    results: dict[tuple[int, int], Completion] = {}
    eos_set = set(eos)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        for b, lo in enumerate(range(0, len(order), batch_size)):
            idx = order[lo:lo + batch_size]
            ids, mask = _left_pad([prompt_ids[i] for i in idx], pad_id)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(params.seed * 1_000_003 + b)
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                    **({"tokenizer": tokenizer} if params.stop else {}),
                )
            new = out[:, ids.shape[1]:].tolist()
            for r, row in enumerate(new):
                i, s = idx[r // params.num_return_sequences], r % params.num_return_sequences
                text, tok_ids, reason = _finish(tokenizer, row, eos_set, pad_id, params.stop)
                results[(i, s)] = Completion(i, s, text, prompt_ids[i], tok_ids, reason)
    finally:
        model.train(was_training)
    return [results[(i, s)] for i in range(len(prompts)) for s in range(params.num_return_sequences)]


def _generation_config(model: Any, tokenizer: Any, params: SamplingParams) -> tuple[Any, list[int], int]:
    """(GenerationConfig, EOS ids, pad id) exactly as :func:`generate` builds them."""
    from transformers import GenerationConfig

    eos = _eos_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, eos)
    cfg = GenerationConfig(
        do_sample=not params.greedy,
        max_new_tokens=params.max_new_tokens,
        num_return_sequences=params.num_return_sequences,
        eos_token_id=eos,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        **({} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}),
        **({"stop_strings": list(params.stop)} if params.stop else {}),
    )
    return cfg, eos, pad_id


# --------------------------------------------------------------------------- many seeded batches, one decode

#: logits processors the batched engine applies as transformers would (row-wise, stateless);
#: a generation config that adds any other one is sampled by ``generate`` instead
ENGINE_PROCESSORS = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper")


def _base_model(model: Any) -> Any:
    return unwrap_model(model)


def _cache_kwarg(model: Any) -> str | None:
    import inspect

    params = inspect.signature(_base_model(model).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _engine_setup(model: Any, gen_cfg: Any, prompt_width: int) -> tuple[Any, str | None]:
    """(transformers' logits processors for ``gen_cfg`` on ``model``, None) when the batched
    engine reproduces ``generate`` for it, else (None, the reason)."""
    base = _base_model(model)
    if getattr(base.config, "is_encoder_decoder", False):
        return None, "an encoder-decoder model"
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None, "a prompt-learning adapter (its virtual tokens are generate's to insert)"
    if gen_cfg.stop_strings:
        return None, "stop strings"
    import inspect

    forward_params = inspect.signature(base.forward).parameters
    if "position_ids" not in forward_params or _cache_kwarg(model) is None:
        return None, f"{type(base).__name__}.forward takes no position_ids or cache"
    try:
        from transformers import DynamicCache, LogitsProcessorList

        merged, _ = base._prepare_generation_config(gen_cfg)
        procs = base._get_logits_processor(
            generation_config=merged, input_ids_seq_length=prompt_width, encoder_input_ids=None,
            prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(), device=str(base.device),
            model_kwargs={})
        layers = DynamicCache(config=base.config).layers
    except Exception as e:  # transformers' internals moved: generate is the reference, use it
        return None, f"transformers' generation set-up could not be reproduced ({type(e).__name__}: {e})"
    other = sorted({type(p).__name__ for p in procs} - set(ENGINE_PROCESSORS))
    if other:
        return None, f"the model's generation config adds logits processors {other}"
    if (merged.num_beams or 1) > 1 or merged.cache_implementation is not None or merged.prefill_chunk_size:
        return None, "beam search, a non-default cache or chunked prefill in the model's generation config"
    if any(type(layer).__name__ not in ("DynamicLayer", "DynamicSlidingWindowLayer") for layer in layers):
        return None, "a cache with layers other than key/value ones (linear attention, recurrent state)"
    return procs, None


def engine_unsupported_reason(model: Any, tokenizer: Any, params: SamplingParams) -> str | None:
    """Why :func:`generate_batches` would hand ``params`` on ``model`` to ``generate`` batch by
    batch instead of its one batched decode; None when it decodes them itself."""
    gen_cfg, _, _ = _generation_config(model, tokenizer, params)
    return _engine_setup(model, gen_cfg, 1)[1]


def generate_batches(
    model: Any,
    tokenizer: Any,
    batches: Sequence[tuple[Sequence[Prompt], int]],
    params: SamplingParams | None = None,
    *,
    max_prompt_length: int | None = None,
    chat: bool = True,
    engine: Literal["auto", "hf"] = "auto",
    logprobs: bool = False,
    merge: bool = True,
) -> list[list[Completion]]:
    """Sample each ``(prompts, seed)`` batch as ``generate(model, tokenizer, prompts,
    replace(params, seed=seed), batch_size=len(prompts))`` samples it, returning its completions
    (ordered by prompt, then sample) per batch.

    ``engine="auto"`` decodes all batches together in ONE loop where it can reproduce
    ``generate`` (:func:`engine_unsupported_reason`; else it is ``"hf"``): each batch keeps its
    own generator, seeded as ``generate`` seeds its batch and drawing exactly the noise
    ``torch.multinomial`` would draw for it at every step, so the same draws pick the same tokens
    -- up to float rounding: rows batched differently round their logits differently in the last
    bits, which changes a token only when a draw falls within that rounding of a tie.  What it does
    that ``generate`` does not:

    * a prompt is computed once and its key/value cache repeated for its
      ``num_return_sequences`` samples (``generate`` runs the prefill on every copy);
    * finished rows leave the batch (their cache rows are dropped), so every step computes only
      the rows still generating (``generate`` carries finished rows to the longest one's end);
    * one Python loop for all batches: per-step work does not grow with the number of batches
      beyond drawing each batch's noise;
    * ``logprobs=True`` records each sampled token's log-prob under the model's logits
      (temperature 1) in :attr:`Completion.logprobs`, at no extra forward.

    ``merge=False`` runs the engine once per batch instead of once for all: a batch's numbers then
    depend on nothing but the batch.  Merged, they depend on the other batches in the last bits
    (matmul rounding varies with the number of rows): in fp32 that moved log-probs by at most 5e-6
    and changed no token in 16k sampled (toy:bench, 2 batches merged vs alone); under bf16 autocast
    by up to 0.05 and one sequence in 320.  Callers whose numbers must not depend on which batches
    are decoded together (a rollout's chunks, across process layouts) pass ``merge=False``.

    ``engine="hf"`` calls ``generate`` per batch (``Completion.logprobs`` stays None).
    """
    params = params or SamplingParams()
    if engine not in ("auto", "hf"):
        raise ValueError(f"engine must be 'auto' or 'hf', got {engine!r}")
    todo = [(list(p), int(seed)) for p, seed in batches]
    if engine == "auto" and todo and all(p for p, _ in todo):
        gen_cfg, eos, pad_id = _generation_config(model, tokenizer, params)
        ids = [encode_prompts(tokenizer, p, max_prompt_length, chat) for p, _ in todo]
        width = max(len(x) for b in ids for x in b)
        procs, reason = _engine_setup(model, gen_cfg, width)
        if reason is None:
            if merge:
                return _batched_decode(model, tokenizer, todo, ids, params, procs, eos, pad_id, logprobs)
            return [_batched_decode(model, tokenizer, [b], [i], params, procs, eos, pad_id, logprobs)[0]
                    for b, i in zip(todo, ids)]
    from dataclasses import replace

    return [generate(model, tokenizer, p, replace(params, seed=seed), batch_size=max(len(p), 1),
                     max_prompt_length=max_prompt_length, chat=chat) for p, seed in todo]


@torch.no_grad()
def _batched_decode(model: Any, tokenizer: Any, batches: list[tuple[list[Prompt], int]], ids: list[list[list[int]]],
                    params: SamplingParams, procs: Any, eos: list[int], pad_id: int,
                    want_logps: bool) -> list[list[Completion]]:
    base = _base_model(model)
    device = base.device
    k = params.num_return_sequences
    cache_kw = _cache_kwarg(model)
    assert cache_kw is not None  # _engine_setup checked it
    # rows in generate's order: each batch's prompts sorted by (length, index), samples consecutive
    orders = [sorted(range(len(b)), key=lambda i: (len(b[i]), i)) for b in ids]
    prompts = [b[i] for b, order in zip(ids, orders) for i in order]
    batch_of = torch.tensor([n for n, order in enumerate(orders) for _ in order for _ in range(k)], device=device)
    n_rows = batch_of.numel()
    from transformers import DynamicCache

    pids, pmask = _left_pad(prompts, pad_id)
    pids, pmask = pids.to(device), pmask.to(device)
    pos = (pmask.cumsum(-1) - 1).masked_fill(pmask == 0, 0)
    mask: torch.Tensor | None = None if bool((pmask == 1).all()) else pmask
    cache = DynamicCache(config=base.config)
    gens = []
    for _, seed in batches:
        g = torch.Generator(device=device)
        g.manual_seed(seed * 1_000_003)  # generate's seed of its batch 0 (one batch per call)
        gens.append(g)
    eos_t = torch.tensor(eos, device=device)
    tokens = torch.full((n_rows, params.max_new_tokens), pad_id, dtype=torch.long, device=device)
    lps = torch.zeros((n_rows, params.max_new_tokens), dtype=torch.float32, device=device)
    length = torch.full((n_rows,), params.max_new_tokens, dtype=torch.long, device=device)
    with eval_mode(model):
        out = model(input_ids=pids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{cache_kw: cache})
        logits = out.logits[:, -1].to(dtype=torch.float32)
        if k > 1:  # the prompt's cache serves all its samples
            cache.batch_repeat_interleave(k)
            logits = logits.repeat_interleave(k, dim=0)
            mask = None if mask is None else mask.repeat_interleave(k, dim=0)
            pos = pos.repeat_interleave(k, dim=0)
        last = pos[:, -1:]
        alive = torch.arange(n_rows, device=device)
        rows_of = [(batch_of == n).nonzero().squeeze(1) for n in range(len(batches))]
        unfinished = [True] * len(batches)
        for t in range(params.max_new_tokens):
            scores = procs(tokens[alive, :t], logits) if len(procs) else logits
            if params.greedy:
                nxt = torch.argmax(scores, dim=-1)
            else:
                probs = torch.softmax(scores, dim=-1)
                noise = torch.empty_like(probs)
                b_alive = batch_of[alive]
                for n, g in enumerate(gens):
                    if not unfinished[n]:
                        continue
                    # what torch.multinomial(probs, 1) draws for the whole batch: Exp(1) noise over
                    # [rows, V] (its one-sample path is argmax(p / q)); rows that finished are drawn for
                    # and dropped, as generate draws for them and pads them
                    q = torch.empty((rows_of[n].numel(), probs.shape[-1]), dtype=probs.dtype,
                                    device=device).exponential_(1, generator=g)
                    here = (b_alive == n).nonzero().squeeze(1)
                    local = torch.searchsorted(rows_of[n], alive[here])
                    noise[here] = q[local]
                nxt = torch.argmax(probs / noise, dim=-1)
            tokens[alive, t] = nxt
            if want_logps:
                lps[alive, t] = logits.gather(1, nxt[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
            done = torch.isin(nxt, eos_t)
            if bool(done.any()):
                length[alive[done]] = t + 1
                keep = (~done).nonzero().squeeze(1)
                alive, nxt, last = alive[keep], nxt[keep], last[keep]
                mask = None if mask is None else mask[keep]
                cache.batch_select_indices(keep)
                left = set(batch_of[alive].tolist())
                unfinished = [n in left for n in range(len(batches))]
            if alive.numel() == 0 or t + 1 == params.max_new_tokens:
                break
            last = last + 1
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last, use_cache=True,
                        logits_to_keep=1, **{cache_kw: cache})
            logits = out.logits[:, -1].to(dtype=torch.float32)
    eos_set = set(eos)
    tok_rows, lp_rows, lengths = tokens.tolist(), lps.tolist(), length.tolist()
    results: list[list[Completion]] = []
    r = 0
    for (b_prompts, _), b_ids, order in zip(batches, ids, orders):
        found: dict[tuple[int, int], Completion] = {}
        for i in order:
            for s in range(k):
                row = tok_rows[r][:lengths[r]]
                text, tok_ids, reason = _finish(tokenizer, row, eos_set, pad_id, ())
                found[(i, s)] = Completion(i, s, text, b_ids[i], tok_ids, reason,
                                           logprobs=lp_rows[r][:len(tok_ids)] if want_logps else None)
                r += 1
        results.append([found[(i, s)] for i in range(len(b_prompts)) for s in range(k)])
    return results


@torch.no_grad()
def completion_logprobs(
    model: Any, completions: Sequence[Completion], pad_id: int, batch_size: int = 16
) -> torch.Tensor:
    """Sum of log p(token | prompt, earlier tokens) over each completion's ``token_ids``,
    under ``model`` at temperature 1 (its own distribution).  Shape [len(completions)], float32."""
    device = next(model.parameters()).device
    out = torch.zeros(len(completions), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(completions), batch_size):
            chunk = completions[lo:lo + batch_size]
            seqs = [c.prompt_ids + c.token_ids for c in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            lmask = torch.zeros_like(ids)
            for r, (c, s) in enumerate(zip(chunk, seqs)):
                ids[r, :len(s)] = torch.tensor(s)
                attn[r, :len(s)] = 1
                lmask[r, len(c.prompt_ids):len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
            logps, _ = sequence_logps(logits, ids.to(device), lmask.to(device))
            out[lo:lo + len(chunk)] = logps.float().cpu()
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- loading


def resolve_model_dir(path: str | Path) -> str:
    """A run directory -> its ``final/``; ``<world>[:<size>]`` -> that world's (built) base model;
    else unchanged."""
    s = str(path)
    base = find_base_model(s)
    if base is not None:
        return str(base)
    p = Path(s).expanduser()
    if p.is_dir() and (p / "final").is_dir() and not (p / "config.json").exists():
        return str(p / "final")
    # "org/name" may be a hub id; only an explicit path can be known missing here
    if s.startswith((".", "/", "~")) and not p.exists():
        raise FileNotFoundError(f"model {s!r} does not exist")
    return s


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (toy names resolved): the one the
    harness recorded next to it, else the adapter config's ``base_model_name_or_path``."""
    from harness.modeling.peft_setup import META_FILE

    meta_path = Path(path) / META_FILE
    if meta_path.is_file():
        base = json.loads(meta_path.read_text()).get("base_model")
        if base:
            return resolve_model_dir(base)
    cfg_path = Path(path) / ADAPTER_CONFIG
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON: {e}") from None
    if not base:
        raise ValueError(f"{cfg_path}: no base_model_name_or_path; cannot tell which model the adapter belongs to")
    return resolve_model_dir(base)


def _has_tokenizer(path: str | Path) -> bool:
    p = Path(path)
    return (p / "tokenizer_config.json").is_file() or (p / "tokenizer.json").is_file()


def load_tokenizer(path: str | Path, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_dir(path)
    src = path
    if is_adapter_dir(path) and not _has_tokenizer(path):
        src = adapter_base(path)
    tok = AutoTokenizer.from_pretrained(src, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    path: str | Path,
    *,
    merge: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a run dir, its ``final/``, a peft adapter dir, a hub id or ``toy``.

    An adapter directory (``adapter_config.json``) loads its base model and wraps it in a
    ``PeftModel``; ``merge=True`` folds the adapter into the weights (LoRA-style adapters
    only) for faster generation.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(path)
    tok = load_tokenizer(path, revision=revision, trust_remote_code=trust_remote_code)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if is_adapter_dir(path):
        from harness.modeling.peft_setup import load_trained

        # peft_setup rebuilds the base exactly as training loaded it (a 4-bit base for QLoRA)
        model = load_trained(path, merge=merge, base_path=adapter_base(path), device=device)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    # bitsandbytes places quantised weights when loading and refuses to move them
    if not getattr(model, "is_loaded_in_4bit", False) and not getattr(model, "is_loaded_in_8bit", False):
        model = model.to(device)
    return model.eval(), tok


def is_reward_model_dir(path: str | Path) -> bool:
    """A directory holding a sequence-classification model (what ``method=reward`` saves)."""
    cfg = Path(resolve_model_dir(path)) / "config.json"
    if not cfg.is_file():
        return False
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


# --------------------------------------------------------------------------- vLLM (optional)


def vllm_available() -> bool:
    """vLLM is importable and a CUDA device exists (its only supported setting here)."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def generate_vllm(
    model_dir: str | Path,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    params: SamplingParams | None = None,
    *,
    max_prompt_length: int | None = None,
    gpu_memory_utilization: float = 0.5,
) -> list[Completion]:
    """The same contract as :func:`generate`, served by vLLM from a directory of full weights.

    Seeds are per request (``seed + prompt index``), so results do not depend on batching,
    but vLLM's sampler differs from HF's: the same seed gives different texts across the
    two backends.  Adapter directories must be merged first.  Not exercised by the CPU
    test suite (it needs a GPU and the ``vllm`` package).
    """
    if not vllm_available():
        raise RuntimeError("the vLLM backend needs the `vllm` package and a CUDA device; use backend='hf'")
    params = params or SamplingParams()
    path = resolve_model_dir(model_dir)
    if is_adapter_dir(path):
        raise ValueError(f"{path} is a peft adapter; vLLM needs merged weights (load_causal_lm(..., merge=True) and save)")
    import vllm

    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_length)
    llm = vllm.LLM(model=path, tokenizer=path, seed=params.seed, gpu_memory_utilization=gpu_memory_utilization)
    sps = [
        vllm.SamplingParams(
            n=params.num_return_sequences, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, seed=params.seed + i,
        )
        for i in range(len(prompts))
    ]
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sps)
    result = []
    for i, out in enumerate(outs):
        for s, o in enumerate(out.outputs):
            reason: FinishReason = "length" if o.finish_reason == "length" else ("stop" if o.stop_reason is not None and isinstance(o.stop_reason, str) else "eos")
            result.append(Completion(i, s, o.text.strip(), prompt_ids[i], list(o.token_ids), reason))
    return result
