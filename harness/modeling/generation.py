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
    from transformers import GenerationConfig

    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_length, chat)
    eos = _eos_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, eos)
    device = next(model.parameters()).device
    gen_cfg = GenerationConfig(
        do_sample=not params.greedy,
        max_new_tokens=params.max_new_tokens,
        num_return_sequences=params.num_return_sequences,
        eos_token_id=eos,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        **({} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}),
        **({"stop_strings": list(params.stop)} if params.stop else {}),
    )
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
