"""Uniform evaluation of a trained model: what every run and sweep trial reports at its end.

    harness run method=dpo                 # the runner calls evaluate_trained() after training
    harness eval runs/dpo-0001             # re-evaluate a finished run (harness.cli.eval)
    harness eval model=toy eval.baseline=toy:tiny

The run spec's ``eval`` section (:class:`harness.core.config.EvalSpec`) decides what is measured:

- samples: the candidate and the baseline (the run's starting point) answer the same
  held-out instructions with the same sampling parameters and seed
  (:mod:`harness.modeling.generation`); the baseline's answers are cached by weights and parameters,
  so the trials of a sweep generate them once;
- gold reward (built-in worlds): mean / std of the world's gold scorer for both, overall and
  per group of eval prompts the world defines (e.g. per task cluster, held-out clusters);
- reward-model score: mean / std of a reward model's scores for both;
- KL(candidate || baseline): the sampled estimate E_{y~pi}[log pi(y|x) - log pi_base(y|x)]
  from ``kl_samples`` samples per prompt drawn at temperature 1 (the model's own
  distribution), with its standard error over prompts;
- pairwise win rates against the baseline's answers (AlpacaEval 2.0's columns, both
  orders, cached judgements; :mod:`harness.evaluation.judges`, :mod:`harness.evaluation.winrate`) for the main
  judge, flat in the result, and every judge under ``judges`` keyed by its kind, each with
  the judge's identity so numbers of different judges never share a column;
- lm-eval tasks (:mod:`harness.evaluation.lmeval`);
- for reward models (``method=reward``): chosen-over-rejected accuracy on held-out pairs
  (RewardBench's measure) instead of the above.

Every component is timed (``timing_s``); samples go to ``<run>/samples.jsonl`` and to the
tracker as a table.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.config import EvalSpec, RunSpec
from harness.evaluation import lmeval  # noqa: F401  (imports lm-eval now: a sweep's fork server preloads it)
from harness.modeling.generation import (
    Completion,
    Prompt,
    SamplingParams,
    completion_logprobs,
    generate,
    generate_vllm,
    is_reward_model_dir,
    load_causal_lm,
    prompt_text,
    resolve_model_dir,
    vllm_available,
)
from harness.store.cache import BlobCache, cache_dir
from harness.store.runs import atomic_write_text
from harness.worlds.base import Scorer, eval_world

#: bump when the baseline-sample cache's contents change meaning
BASELINE_CACHE_VERSION = "1"
PAIRWISE_COLUMNS = (
    "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
    "avg_length", "length_controlled_winrate", "lc_standard_error",
)


class EvalError(ValueError):
    """The eval section cannot run as configured; the message names the key and the fix."""


# --------------------------------------------------------------------------- small helpers


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _method_name(spec: RunSpec) -> str | None:
    return getattr(spec.method, "name", None) if spec.method is not None else None


def resolve_judge_kind(ev: EvalSpec, has_gold: bool) -> str:
    if ev.judge != "auto":
        return ev.judge
    if has_gold:
        return "gold"
    return "reward_model" if ev.reward_model else "none"


def _check_judge_config(ev: EvalSpec, has_gold: bool, custom_prompts: bool, data: str) -> str:
    """Cheap checks of the judge settings, before any model loads."""
    kind = resolve_judge_kind(ev, has_gold)
    if kind == "gold" and (not has_gold or custom_prompts):
        raise EvalError(
            f"eval.judge=gold scores answers with a built-in world's gold scorer, which only knows that "
            f"world's own prompts; data={data!r} {'with eval.prompts set ' if has_gold else ''}has none: "
            "use a built-in world without eval.prompts, or pick eval.judge=reward_model/hf/openai"
        )
    if kind in ("hf", "openai") and not ev.judge_model:
        raise EvalError(f"eval.judge={kind} needs eval.judge_model")
    if kind == "reward_model" and not ev.reward_model:
        raise EvalError("eval.judge=reward_model needs eval.reward_model (a reward run dir or model path)")
    if kind == "openai":
        host = urllib.parse.urlparse(ev.judge_base_url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(ev.judge_api_key_env):
            raise EvalError(
                f"eval.judge=openai at {ev.judge_base_url} needs an API key in ${ev.judge_api_key_env} "
                "(set it, or name another variable with eval.judge_api_key_env)"
            )
    if ev.reward_model:
        path = resolve_model_dir(ev.reward_model)
        if Path(path).is_dir() and not is_reward_model_dir(path):
            raise EvalError(
                f"eval.reward_model: {path} is not a sequence-classification model (train one with method=reward)"
            )
    return kind


def load_eval_prompts(spec: RunSpec) -> tuple[list[Prompt], str]:
    """The instructions to answer and where they came from (a description)."""
    from harness.core.contract import DataKind
    from harness.data.load import DataError, load_records

    ev = spec.eval
    if ev.prompts is not None:
        source, split = ev.prompts, ev.prompts_split
    elif (world := eval_world(spec)).eval_prompts():
        prompts: list[Prompt] = []
        prompts.extend(world.eval_prompts()[: ev.num_prompts])
        return prompts, f"{world.name} world eval prompts ({world.split_path('eval_prompts')})"
    elif spec.data.eval_split is not None:
        source, split = spec.data.source, spec.data.eval_split
    else:
        raise EvalError(
            "no held-out instructions to evaluate on: set eval.prompts (a file or hub id with a prompt "
            "column) or data.eval_split"
        )
    try:
        loaded = load_records(source, split, DataKind.PROMPT, max_samples=ev.num_prompts)
    except DataError as e:
        raise EvalError(f"eval prompts: {e}") from None
    return [r["prompt"] for r in loaded.records], loaded.source


# --------------------------------------------------------------------------- samples


def sampling_params(ev: EvalSpec) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p,
        stop=tuple(ev.stop), seed=ev.seed,
    )


def _use_vllm(ev: EvalSpec) -> bool:
    if ev.backend != "vllm":
        return False
    if not vllm_available():
        raise EvalError("eval.backend=vllm needs the vllm package and a CUDA device; use eval.backend=hf")
    return True


def _sample(model: Any, tok: Any, path: str | None, prompts: list[Prompt], params: SamplingParams,
            ev: EvalSpec) -> list[Completion]:
    if path is not None and _use_vllm(ev):
        return generate_vllm(path, tok, prompts, params)
    return generate(model, tok, prompts, params, batch_size=ev.batch_size)


def _baseline_key(baseline: str, prompts: list[Prompt], params: SamplingParams, backend: str, batch_size: int,
                  device: torch.device) -> dict[str, Any]:
    """Everything the baseline's samples depend on.  The fingerprint covers the weights (a hub
    id's resolved commit: :class:`_Baseline` loads its default revision), the tokenizer and
    the chat template the prompts are rendered with.  HF sampling is seeded per batch, so the
    batch size and the device's random stream pick which tokens come out; library versions
    change the sampling code itself."""
    import transformers

    from harness.modeling.identity import weights_fingerprint

    return {"v": BASELINE_CACHE_VERSION, "weights": weights_fingerprint(baseline), "dtype": "float32",
            "prompts": prompts, "params": asdict(params), "backend": backend,
            "batch_size": batch_size if backend == "hf" else None, "device": device.type,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


class _Baseline:
    """The baseline model, loaded only when something needs it (cache misses, KL)."""

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self.device = device
        self._loaded: tuple[Any, Any] | None = None

    def get(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = load_causal_lm(self.path, device=self.device)
        return self._loaded


def _same_vocab(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


# --------------------------------------------------------------------------- judges


def _build_judge(kind: str, ev: EvalSpec, device: torch.device, gold: Scorer | None) -> Any:
    from harness.evaluation.judges import build_judge

    if kind == "gold":
        if gold is None:
            raise EvalError("eval.judge=gold: this data has no gold scorer")
        return build_judge("scorer", score=gold.fn, name=gold.identity)
    if kind == "reward_model":
        assert ev.reward_model is not None
        return build_judge("reward_model", model=resolve_model_dir(ev.reward_model), model_name=ev.reward_model,
                           device=str(device))
    if kind == "hf":
        assert ev.judge_model is not None
        return build_judge("hf", model=resolve_model_dir(ev.judge_model), model_name=ev.judge_model,
                           device=str(device))
    if kind == "openai":
        return build_judge("openai", model=ev.judge_model, base_url=ev.judge_base_url,
                           api_key_env=ev.judge_api_key_env)
    raise EvalError(f"eval.judge: unknown judge {kind!r}")


def _judge_kinds(primary: str, ev: EvalSpec, gold_prompts: bool) -> list[str]:
    """The main judge first, then the free extras: a given reward model, and gold on a world's own prompts."""
    kinds = [] if primary == "none" else [primary]
    if ev.reward_model and "reward_model" not in kinds:
        kinds.append("reward_model")
    if gold_prompts and "gold" not in kinds:
        kinds.append("gold")
    return kinds


def _pairwise(judge: Any, kind: str, ev: EvalSpec, instructions: list[str], cand: list[str],
              base: list[str]) -> tuple[dict[str, Any], list[float | None]]:
    from harness.evaluation.judges import RetryPolicy, judge_pairs
    from harness.evaluation.winrate import pairwise_stats

    judged = judge_pairs(
        judge, instructions, cand, base, cache_dir("judgements"),
        retry=RetryPolicy(max_retries=ev.judge_max_retries),
        workers=ev.judge_workers if kind == "openai" else 1,
    )
    keep = judged.valid_indices()
    out: dict[str, Any] = {"judge": judged.identity, "judging": judged.report.as_dict()}
    if not keep:
        out["error"] = f"all {len(instructions)} pairs failed: {judged.report.errors_by_reason}"
        return out, judged.preferences
    with _single_blas_thread():
        stats = pairwise_stats(
            [judged.preferences[i] for i in keep],  # type: ignore[misc]
            [len(cand[i]) for i in keep], [len(base[i]) for i in keep], [instructions[i] for i in keep],
            n_bootstrap=ev.lc_bootstrap, seed=ev.seed,
        )
    out.update(stats)
    return out, judged.preferences


@contextlib.contextmanager
def _single_blas_thread() -> Iterator[None]:
    """The LC win rate fits hundreds of tiny GLMs; a multi-threaded BLAS spends far longer
    synchronising its threads than computing (measured 35x slower with 2 OpenBLAS threads on
    a busy 2-core machine), so those fits run on one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


def _verdict(p: float | None) -> str | None:
    if p is None:
        return None
    return "win" if p > 0.5 + 1e-9 else "loss" if p < 0.5 - 1e-9 else "tie"


# --------------------------------------------------------------------------- KL


def kl_estimate(
    model: Any, tok: Any, base_model: Any, prompts: list[Prompt], n_samples: int, max_new_tokens: int,
    seed: int, batch_size: int,
) -> dict[str, float]:
    """KL(pi || pi_base) per sequence, sampled from pi at temperature 1 (no top-k/top-p).

    Each sample's log-ratio is an unbiased estimate of the KL of the first ``max_new_tokens``
    tokens; the standard error is over prompts (a prompt's samples are averaged first,
    since they share the prompt).
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                            num_return_sequences=n_samples, seed=seed + 7919)
    samples = generate(model, tok, prompts, params, batch_size=batch_size)
    pad = int(tok.pad_token_id)
    lp = completion_logprobs(model, samples, pad, batch_size)
    lp_base = completion_logprobs(base_model, samples, pad, batch_size)
    ratios = (lp - lp_base).tolist()
    per_prompt: dict[int, list[float]] = {}
    for c, r in zip(samples, ratios):
        per_prompt.setdefault(c.prompt_index, []).append(r)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    kl_mean, prompt_std = _mean_std(means)
    _, sample_std = _mean_std(ratios)
    n_tok = sum(c.n_tokens for c in samples)
    return {
        "kl_mean": kl_mean,
        "kl_stderr": prompt_std / math.sqrt(len(means)) if len(means) > 1 else math.nan,
        "kl_std": sample_std,
        "kl_per_token": sum(ratios) / max(n_tok, 1),
        "kl_n_samples": len(ratios),
    }


# --------------------------------------------------------------------------- policies


@dataclass
class _Plan:
    """What a policy evaluation will do, settled before any model loads."""

    primary_judge: str
    lm_eval_tasks: list[str]
    #: lm-eval task directories: the user's, then the world's
    lm_eval_include: list[str]
    prompts: list[Prompt]
    prompts_source: str
    #: the world's gold scorer when the prompts are the world's own, else None
    gold: Scorer | None
    #: named groups of the prompts (indices), e.g. per task cluster
    groups: dict[str, list[int]]


def check_eval_spec(spec: RunSpec, load_prompts: bool = True) -> Any:
    """Every cheap check of ``spec.eval`` (judge settings, keys, instructions to answer).

    Raises :class:`EvalError` naming the key; call it before training or loading models.
    Returns the plan (``None`` for reward models, which need no prompts or judge).
    """
    if _method_name(spec) == "reward":
        if load_prompts:
            load_rm_pairs(spec)
        return None
    ev = spec.eval
    world = eval_world(spec)
    gold = world.gold_scorer() if ev.prompts is None else None
    _use_vllm(ev)
    primary = _check_judge_config(ev, world.gold_scorer() is not None, ev.prompts is not None,
                                  spec.eval.world or spec.data.source)
    world_tasks = world.lm_eval_tasks() if (ev.lm_eval_tasks is None or ev.lm_eval_tasks) else None
    tasks = list(ev.lm_eval_tasks) if ev.lm_eval_tasks is not None else list(world_tasks.default if world_tasks else [])
    include = list(ev.lm_eval_include) + ([str(world_tasks.include)] if world_tasks else [])
    if not load_prompts:  # hub data: fetched when evaluation starts, not while validating
        return None
    prompts, source = load_eval_prompts(spec)
    groups = world.eval_groups([prompt_text(p) for p in prompts]) if gold is not None else {}
    return _Plan(primary, tasks, include, prompts, source, gold, groups)


def _baseline_samples(base: _Baseline, prompts: list[Prompt], params: SamplingParams, ev: EvalSpec,
                      timer: _Timer, result: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The baseline's answers: from the cache when the same weights answered the same prompts
    with the same parameters before (every trial of a sweep shares them), else generated."""
    cache = BlobCache("eval-baseline")
    with timer("baseline_generation"):  # a cache hit costs hashing the baseline's weights
        key = _baseline_key(base.path, prompts, params, "vllm" if _use_vllm(ev) else "hf", ev.batch_size, base.device)
        cached = cache.get(key)
        if not (isinstance(cached, list) and len(cached) == len(prompts)):
            cached = None
    result["baseline_cache_hit"] = cached is not None
    if cached is None:
        with timer("load_baseline"):
            bm, btok = base.get()
        with timer("baseline_generation"):
            outs = _sample(bm, btok, base.path, prompts, params, ev)
            cached = [{"text": c.text, "n_tokens": c.n_tokens} for c in outs]
            cache.put(key, cached)
    return [r["text"] for r in cached], [r["n_tokens"] for r in cached]


def _score_summary(prefix: str, scores: list[float], groups: dict[str, list[int]], result: dict[str, Any]) -> None:
    """``<prefix>_mean`` / ``_std`` and, per group, ``<prefix>_by_group[<group>]`` = mean."""
    result[f"{prefix}_mean"], result[f"{prefix}_std"] = _mean_std(scores)
    if groups:
        result[f"{prefix}_by_group"] = {g: _mean_std([scores[i] for i in idx])[0] for g, idx in groups.items()}


def _judge_all(plan: _Plan, ev: EvalSpec, device: torch.device, judges: dict[str, Any], instructions: list[str],
               cand_text: list[str], base_text: list[str], result: dict[str, Any],
               errors: dict[str, str]) -> list[float | None] | None:
    """Win rates of the candidate against the baseline under every judge; the main judge's
    columns go flat into ``result``.  Returns the main judge's per-prompt preferences."""
    from harness.evaluation.judges import JudgeError

    preferences: list[float | None] | None = None
    result["judges"] = {}
    for kind in _judge_kinds(plan.primary_judge, ev, plan.gold is not None):
        judge = judges.get(kind) or _build_judge(kind, ev, device, plan.gold)
        try:
            res, prefs = _pairwise(judge, kind, ev, instructions, cand_text, base_text)
        except JudgeError as e:
            errors[f"judge/{kind}"] = str(e)
            continue
        result["judges"][kind] = res
        if kind == plan.primary_judge:
            preferences = prefs
            result["judge"] = res["judge"]
            result["judging"] = res["judging"]
            for col in PAIRWISE_COLUMNS:
                if col in res:
                    result[col] = res[col]
            if "error" in res:
                errors[f"judge/{kind}"] = res["error"]
    return preferences


def _policy_eval(
    model: Any,
    tok: Any,
    spec: RunSpec,
    *,
    model_path: str | None,
    baseline: str | None,
    out_dir: Path | None,
    tracker: Any,
    plan: _Plan | None = None,
) -> dict[str, Any]:
    ev = spec.eval
    timer = _Timer()
    t0 = time.perf_counter()
    plan = plan or check_eval_spec(spec)
    assert plan is not None
    prompts = plan.prompts
    manager = None
    if plan.lm_eval_tasks:
        from harness.evaluation.lmeval import task_manager

        with timer("lm_eval"):
            manager = task_manager(plan.lm_eval_tasks, plan.lm_eval_include)
    if baseline is not None:
        baseline = resolve_model_dir(baseline)
    instructions = [prompt_text(p) for p in prompts]
    params = sampling_params(ev)
    device = next(model.parameters()).device
    result: dict[str, Any] = {
        "n_prompts": len(prompts), "prompts_source": plan.prompts_source, "candidate": model_path,
        "baseline": baseline, "sampling": {k: v for k, v in asdict(params).items()}, "skipped": {},
    }
    skipped: dict[str, str] = result["skipped"]
    errors: dict[str, str] = {}

    with timer("generation"):
        cand = _sample(model, tok, model_path, prompts, params, ev)
    cand_text = [c.text for c in cand]
    result["avg_new_tokens"] = sum(c.n_tokens for c in cand) / len(cand)
    result["finish_reasons"] = {r: sum(c.finish_reason == r for c in cand) for r in ("eos", "stop", "length")}

    base_text: list[str] | None = None
    base_ntok: list[int] | None = None
    base = _Baseline(baseline, device) if baseline is not None else None
    if base is not None:
        base_text, base_ntok = _baseline_samples(base, prompts, params, ev, timer, result)
        result["baseline_avg_length"] = sum(map(len, base_text)) / len(base_text)
    else:
        skipped["baseline"] = "no baseline model: set eval.baseline (or model.reference) for win rates and KL"

    gold: list[float] | None = None
    base_gold: list[float] | None = None
    if plan.gold is not None and ev.gold_reward:
        with timer("gold_reward"):
            result["gold_scorer"] = plan.gold.identity
            gold = [plan.gold(p, o) for p, o in zip(instructions, cand_text)]
            _score_summary("gold_reward", gold, plan.groups, result)
            if base_text is not None:
                base_gold = [plan.gold(p, o) for p, o in zip(instructions, base_text)]
                _score_summary("baseline_gold_reward", base_gold, plan.groups, result)

    judges: dict[str, Any] = {}
    rm_scores: list[float] | None = None
    base_rm: list[float] | None = None
    if ev.reward_model:
        with timer("reward_model"):
            judges["reward_model"] = _build_judge("reward_model", ev, device, plan.gold)
            rm_scores = judges["reward_model"].score_batch(list(zip(instructions, cand_text)))
            result["rm_score_mean"], result["rm_score_std"] = _mean_std(rm_scores)
            if base_text is not None:
                base_rm = judges["reward_model"].score_batch(list(zip(instructions, base_text)))
                result["baseline_rm_score_mean"], result["baseline_rm_score_std"] = _mean_std(base_rm)
            result["reward_model"] = judges["reward_model"].identity

    if base is not None and ev.kl_samples > 0:
        with timer("load_baseline"):
            bm, btok = base.get()
        with timer("kl"):
            if _same_vocab(tok, btok):
                result.update(kl_estimate(model, tok, bm, prompts, ev.kl_samples, ev.max_new_tokens, ev.seed,
                                          ev.batch_size))
            else:
                skipped["kl"] = "the baseline's tokenizer differs from the candidate's: KL over tokens is undefined"
    elif ev.kl_samples == 0:
        skipped["kl"] = "eval.kl_samples=0"

    preferences: list[float | None] | None = None
    if base_text is not None:
        with timer("judge"):
            preferences = _judge_all(plan, ev, device, judges, instructions, cand_text, base_text, result, errors)
        if plan.primary_judge == "none":
            skipped["win_rate"] = "eval.judge=none"

    if plan.lm_eval_tasks:
        from harness.evaluation.lmeval import run_lm_eval

        with timer("lm_eval"):
            result["lm_eval"] = run_lm_eval(
                model, tok, plan.lm_eval_tasks, num_fewshot=ev.lm_eval_num_fewshot,
                limit=ev.lm_eval_limit, batch_size=ev.lm_eval_batch_size,
                apply_chat_template=ev.lm_eval_chat_template, seed=ev.seed, manager=manager,
            )

    rows = []
    for i, c in enumerate(cand):
        rows.append({
            "prompt": instructions[i], "output": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason,
            "baseline_output": base_text[i] if base_text is not None else None,
            "baseline_n_tokens": base_ntok[i] if base_ntok is not None else None,
            "preference": preferences[i] if preferences is not None else None,
            "verdict": _verdict(preferences[i]) if preferences is not None else None,
            "gold_reward": gold[i] if gold is not None else None,
            "baseline_gold_reward": base_gold[i] if base_gold is not None else None,
            "rm_score": rm_scores[i] if rm_scores is not None else None,
            "baseline_rm_score": base_rm[i] if base_rm is not None else None,
        })
    _write_samples(rows, out_dir, tracker)
    if errors:
        result["errors"] = errors
    timer.seconds["total"] = time.perf_counter() - t0
    result["timing_s"] = timer.seconds
    return result


def _write_samples(rows: list[dict[str, Any]], out_dir: Path | None, tracker: Any) -> None:
    if not rows:
        return
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    if tracker is not None:
        columns = list(rows[0])
        tracker.log_table("eval/samples", columns, [[r[c] for c in columns] for r in rows])


# --------------------------------------------------------------------------- reward models


def load_rm_pairs(spec: RunSpec) -> tuple[list[dict[str, Any]], str]:
    from harness.core.contract import DataKind
    from harness.data.load import DataError, load_records

    ev = spec.eval
    if ev.rm_pairs is not None:
        source, split = ev.rm_pairs, ev.rm_pairs_split
    elif pairs := eval_world(spec).heldout_pairs():
        return pairs, f"{spec.eval.world or spec.data.source} world held-out prompts, gold-labelled pairs"
    elif spec.data.eval_split is not None:
        source, split = spec.data.source, spec.data.eval_split
    else:
        raise EvalError("no held-out pairs for reward-model accuracy: set eval.rm_pairs or data.eval_split")
    try:
        loaded = load_records(source, split, DataKind.PAIRED)
    except DataError as e:
        raise EvalError(f"eval.rm_pairs: {e}") from None
    return loaded.records, loaded.source


@torch.no_grad()
def reward_accuracy(model: Any, tok: Any, pairs: list[dict[str, Any]], max_length: int, max_prompt_length: int,
                    batch_size: int = 32) -> dict[str, float]:
    """Share of pairs whose chosen reply scores above the rejected one (ties count half),
    scoring sequences exactly as reward training formats them (:mod:`harness.data.batching`)."""
    from harness.core.contract import DataKind
    from harness.data.batching import collate, tokenize_records
    from harness.modeling.forward import forward_segments

    examples = tokenize_records(pairs, tok, DataKind.PAIRED, max_length, max_prompt_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    margins: list[float] = []
    try:
        for lo in range(0, len(examples), batch_size):
            batch = collate(examples[lo:lo + batch_size], tok.pad_token_id, ("chosen", "rejected")).to(device)
            out = forward_segments(model, batch, "reward")
            chosen, rejected = out["chosen"].score, out["rejected"].score
            assert chosen is not None and rejected is not None  # a reward forward always scores
            margins += (chosen - rejected).float().cpu().tolist()
    finally:
        model.train(was_training)
    correct = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
    acc, std = _mean_std(correct)
    return {
        "rm_accuracy": acc,
        "rm_accuracy_stderr": std / math.sqrt(len(correct)) if len(correct) > 1 else math.nan,
        "rm_margin_mean": sum(margins) / len(margins),
        "rm_n_pairs": len(margins),
    }


def _reward_eval(model: Any, tok: Any, spec: RunSpec, out_dir: Path | None, tracker: Any) -> dict[str, Any]:
    timer = _Timer()
    t0 = time.perf_counter()
    pairs, source = load_rm_pairs(spec)
    with timer("rm_accuracy"):
        res: dict[str, Any] = reward_accuracy(model, tok, pairs, spec.train.max_length, spec.train.max_prompt_length,
                              spec.eval.batch_size)
    res["rm_pairs_source"] = source
    timer.seconds["total"] = time.perf_counter() - t0
    res["timing_s"] = timer.seconds
    return res


# --------------------------------------------------------------------------- entry points


def evaluate_trained(
    *, run: Any, spec: RunSpec, model: Any, tokenizer: Any, baseline_path: str | None, tracker: Any = None
) -> dict[str, Any]:
    """Evaluate a model that just finished training (called by ``harness.training.runner``).

    ``baseline_path`` is the run's starting point (its reference for methods with one);
    ``eval.baseline`` overrides it.  Results are returned (the runner stores them as the
    summary's ``eval``); samples are written to ``<run>/samples.jsonl``.
    """
    out_dir = Path(run.path) if run is not None else None
    if _method_name(spec) == "reward" or getattr(model.config, "num_labels", None) == 1 and \
            type(model).__name__.endswith("ForSequenceClassification"):
        return _reward_eval(model, tokenizer, spec, out_dir, tracker)
    # the runner saves the weights before evaluating: a path lets vLLM serve the samples
    model_path = str(run.final_dir) if run is not None and Path(run.final_dir).is_dir() else None
    return _policy_eval(model, tokenizer, spec, model_path=model_path, baseline=spec.eval.baseline or baseline_path,
                        out_dir=out_dir, tracker=tracker)


def evaluate_model_dir(
    model_dir: str | Path,
    spec: RunSpec,
    *,
    baseline_path: str | None = None,
    out_dir: str | Path | None = None,
    tracker: Any = None,
) -> dict[str, Any]:
    """Evaluate a saved model (run dir, ``final/``, adapter dir, hub id or ``toy``) with
    ``spec.eval``; a sequence-classification model gets reward-model accuracy."""
    path = resolve_model_dir(model_dir)
    out = Path(out_dir) if out_dir is not None else None
    if _method_name(spec) == "reward" or is_reward_model_dir(path):
        from transformers import AutoModelForSequenceClassification

        from harness.modeling.generation import load_tokenizer

        tok = load_tokenizer(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        return _reward_eval(model, tok, spec, out, tracker)
    # configuration errors first: loading a large model only to fail on a missing key is slow
    plan = check_eval_spec(spec)
    model, tok = load_causal_lm(path, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code)
    return _policy_eval(model, tok, spec, model_path=path, baseline=spec.eval.baseline or baseline_path,
                        out_dir=out, tracker=tracker, plan=plan)
