"""Reward sources of online methods: one ``reward=`` option for every online method.

    harness run method=ppo reward=runs/reward-0001             # a reward model (InstructGPT)
    harness run method=grpo reward=gold                         # the data world's gold scorer
    harness run method=online-dpo reward=judge:openai:gpt-4o-mini method.annotation_budget=2000
    harness run method=rloo reward=my_pkg.rewards:length_penalty   # a user function

A source either *scores* completions (``score``: gold scorer, reward model, user function)
or *compares* two completions of a prompt (``compare``: any pairwise judge backend of
evaluation used as an annotator, as in OAIF).  A scalar source also compares (the higher
score wins; ties are 0.5), so pairwise methods take every source; scalar methods (PPO,
RLOO, GRPO) refuse a pairwise-only judge before any model loads.

Judge calls go through evaluation's judging machinery: both orders, retried with backoff,
cached by content under the cache root, and counted.  A judgement that still fails after
the retries raises :class:`RewardSourceError` (the run fails with that message and keeps
its checkpoints); an annotation budget raises :class:`AnnotationBudgetExhausted` when the
next batch would exceed it, which the training loop turns into a clean early stop.
"""

from __future__ import annotations

import importlib
import math
import os
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from harness.core.config import RewardSpec, RunSpec
from harness.evaluation.judges import (
    HFLogprobJudge,
    OpenAIChatJudge,
    RetryPolicy,
    RewardModelJudge,
    judge_pairs,
)
from harness.modeling.generation import is_reward_model_dir, resolve_model_dir
from harness.store.cache import cache_dir
from harness.worlds.base import spec_world

JUDGE_BACKENDS = ("openai", "hf", "reward_model")


class RewardSourceError(RuntimeError):
    """The reward source failed (an annotator outage after its retries, a broken user function)."""


class AnnotationBudgetExhausted(RuntimeError):
    """The run's annotation budget is spent; training stops cleanly at the last full step."""


def parse_source(source: str) -> tuple[str, str]:
    """``reward.source`` -> (kind, argument): gold, judge, function or reward_model."""
    if source == "gold":
        return "gold", ""
    if source.startswith("judge:"):
        _, _, rest = source.partition(":")
        backend, sep, model = rest.partition(":")
        if backend not in JUDGE_BACKENDS or not sep or not model:
            raise ValueError(f"reward.source={source!r}: write judge:<{'|'.join(JUDGE_BACKENDS)}>:<model>")
        return "judge", rest
    module, sep, fn = source.partition(":")
    if sep and fn.isidentifier() and all(p.isidentifier() for p in module.split(".")) and "/" not in source:
        return "function", source
    return "reward_model", source


def is_pairwise_only(source: str) -> bool:
    return parse_source(source)[0] == "judge" and not source.startswith("judge:reward_model:")


def _finite(values: Sequence[float], what: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RewardSourceError(f"{what} returned {v!r} for completion {i}: rewards must be finite numbers")
        out.append(float(v))
    return out


class ScalarSource:
    """Scores each (prompt, completion); compares two by their scores."""

    pairwise_only = False

    def __init__(self, fn: Callable[[list[str], list[str]], list[float]], identity: dict[str, Any]) -> None:
        self._fn = fn
        self.identity = identity
        self.calls = 0

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        try:
            values = self._fn(prompts, completions)
        except RewardSourceError:
            raise
        except Exception as e:
            raise RewardSourceError(f"reward source {self.identity['name']} failed: {type(e).__name__}: {e}") from e
        if len(values) != len(prompts):
            raise RewardSourceError(f"reward source {self.identity['name']} returned {len(values)} scores for "
                                    f"{len(prompts)} completions")
        self.calls += len(prompts)
        return _finite(values, f"reward source {self.identity['name']}")

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float]:
        s = self.score(prompts + prompts, a + b)
        n = len(prompts)
        return [1.0 if s[i] > s[n + i] else 0.0 if s[i] < s[n + i] else 0.5 for i in range(n)]


class JudgeSource:
    """A pairwise judge as annotator: P(a better) per pair, both orders, cached and counted."""

    pairwise_only = True

    def __init__(self, judge: Any, spec: RewardSpec, workers: int, budget: int | None) -> None:
        self.judge = judge
        self.identity = {"name": f"judge:{judge.identity['backend']}:{judge.identity['model']}", **judge.identity}
        self.retry = RetryPolicy(max_retries=spec.judge_max_retries)
        self.workers = workers
        self.budget = budget
        #: judge calls made (retries included) and annotations (pairs) answered
        self.calls = 0
        self.annotations = 0
        self.cache_hits = 0

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        raise RewardSourceError(f"{self.identity['name']} compares two answers and gives no score of one; "
                                "use it with a pairwise method (online-dpo)")

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float]:
        if self.budget is not None and self.annotations + len(prompts) > self.budget:
            raise AnnotationBudgetExhausted(
                f"annotation budget {self.budget} reached ({self.annotations} annotations made)"
            )
        judged = judge_pairs(self.judge, prompts, a, b, cache_dir("judgements"), retry=self.retry,
                             workers=self.workers)
        rep = judged.report
        self.calls += rep.n_judge_calls
        self.cache_hits += rep.n_cache_hits
        if rep.n_failed_pairs:
            raise RewardSourceError(
                f"{self.identity['name']}: {rep.n_failed_pairs} of {len(prompts)} pairs failed after "
                f"{self.retry.max_retries} retries ({dict(rep.errors_by_reason)}); resume from the last checkpoint "
                "once the annotator is back"
            )
        self.annotations += len(prompts)
        return [float(p) for p in judged.preferences]  # type: ignore[arg-type]


def _user_function(ref: str) -> Callable[[list[str], list[str]], list[float]]:
    module, _, name = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward.source={ref!r}: cannot import {name} from {module}: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward.source={ref!r} is not callable")
    return fn  # type: ignore[no-any-return]


def check_source(spec: RunSpec, pairwise_method: bool) -> None:
    """Cheap checks of ``reward`` before any model loads (the runner's check_spec calls it)."""
    kind, arg = parse_source(spec.reward.source)
    if kind == "gold" and spec_world(spec).gold_scorer() is None:
        raise ValueError(f"reward.source=gold: data.source={spec.data.source!r} has no gold scorer; name a "
                         "reward model, a judge or a function")
    if kind == "judge" and is_pairwise_only(spec.reward.source) and not pairwise_method:
        raise ValueError(f"reward.source={spec.reward.source}: a pairwise judge compares two answers; method "
                         f"{spec.method_name!r} needs a score per answer (a reward model, gold or a function)")
    if kind == "judge" and arg.startswith("openai:"):
        host = urllib.parse.urlparse(spec.reward.judge_base_url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(spec.reward.judge_api_key_env):
            raise ValueError(f"reward.source={spec.reward.source} at {spec.reward.judge_base_url} needs an API key in "
                             f"${spec.reward.judge_api_key_env}")
    if kind == "function":
        _user_function(arg)
    if kind == "reward_model":
        path = resolve_model_dir(arg)
        if os.path.isdir(path) and not is_reward_model_dir(path):
            raise ValueError(f"reward.source={arg!r} is not a reward model (a sequence-classification model; train one "
                             "with method=reward)")


def build_source(spec: RunSpec, device: str, budget: int | None = None) -> ScalarSource | JudgeSource:
    kind, arg = parse_source(spec.reward.source)
    if kind == "gold":
        gold = spec_world(spec).gold_scorer()
        if gold is None:
            raise ValueError(f"reward.source=gold: data.source={spec.data.source!r} has no gold scorer")
        return ScalarSource(lambda p, c: [gold(x, y) for x, y in zip(p, c)],
                            {"name": f"gold:{gold.identity}", "kind": "gold"})
    if kind == "function":
        fn = _user_function(arg)
        return ScalarSource(lambda p, c: list(fn(p, c)), {"name": arg, "kind": "function"})
    if kind == "reward_model":
        path = resolve_model_dir(arg)
        rm = RewardModelJudge(path, model_name=arg, device=device, batch_size=spec.reward.batch_size)

        def score(p: list[str], c: list[str]) -> list[float]:
            values = rm.score_batch(list(zip(p, c)))
            rm._scores.clear()  # an online run scores each sample once: memoising would only grow
            return values

        return ScalarSource(score, {"name": f"reward_model:{arg}", "kind": "reward_model", **rm.identity})
    backend, _, model = arg.partition(":")
    if backend == "openai":
        judge: Any = OpenAIChatJudge(model=model, base_url=spec.reward.judge_base_url,
                                     api_key_env=spec.reward.judge_api_key_env)
        return JudgeSource(judge, spec.reward, spec.reward.judge_workers, budget)
    if backend == "hf":
        judge = HFLogprobJudge(resolve_model_dir(model), model_name=model, device=device)
        return JudgeSource(judge, spec.reward, 1, budget)
    judge = RewardModelJudge(resolve_model_dir(model), model_name=model, device=device,
                             batch_size=spec.reward.batch_size)
    return JudgeSource(judge, spec.reward, 1, budget)
