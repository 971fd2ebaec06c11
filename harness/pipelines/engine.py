"""Pipelines: methods whose rounds are stages (generate, build a dataset, score, train), each a
run in the store, linked by content address, resumable stage by stage.

    harness run method=spin method.iterations=3           # runs/spin-<key>/stages/r1-generate, r1-pairs, r1-train, ...
    harness run method=spin method.iterations=3           # re-run after a kill: finished stages are reused

A pipeline adapter (one file in ``methods/``, like every method) defines
``pipeline(hp, ctx)``: plain Python that calls the :class:`PipelineContext` it is given —
``ctx.generate``, ``ctx.transform``, ``ctx.score``, ``ctx.train``, and for self-judging methods
``ctx.judge`` (sampled judgements parsed into scores) and ``ctx.choose`` (multiple-choice
feedback from option log-probs) — to describe its rounds.
Every call is a *stage*: its content key hashes the stage's kind, parameters and the keys
of the stages it consumes; its directory ``<pipeline run>/stages/<name>/`` is a run
(config, status, summary, outputs).  Calling a stage whose directory holds a completed run
with the same key returns the stored result without recomputing anything; the same name
with another key is refused (a changed recipe must not silently mix with old outputs); an
unfinished stage is redone (a train stage resumes from its last checkpoint).  So killing a
pipeline at any point and re-running the same command resumes at the first unfinished
stage.  Train stages are ordinary runs (``harness.training.runner.execute``), evaluated
the same way as any run, tagged with the pipeline and round, so reports show one row and
one curve point per round.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from harness.core.config import RunSpec, merge_raw, resolve, spec_to_dict
from harness.core.judging import mean_judgement, self_reward_score
from harness.modeling.endpoint import Endpoint, chat_complete
from harness.modeling.generation import (
    Completion,
    SamplingParams,
    completion_logprobs,
    encode_prompts,
    generate,
    load_causal_lm,
    resolve_model_dir,
)
from harness.modeling.identity import weights_fingerprint
from harness.store.cache import content_key
from harness.store.runs import Run, atomic_write_json, atomic_write_text, read_jsonl
from harness.training.runner import ensure_model, execute
from harness.worlds.base import spec_world, world_options

#: bump when a stage kind's outputs change meaning: every stage key includes it
STAGE_VERSION = "1"

#: what a transform function returns: its rows, or its rows and statistics to record
TransformResult: TypeAlias = list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]


class PipelineError(RuntimeError):
    """A pipeline cannot continue as asked (a stage's recipe changed under the same name)."""


@dataclasses.dataclass(frozen=True)
class Rows:
    """A stage's output rows: a jsonl file and the content key that names how it was made."""

    path: Path
    key: str

    def load(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def __len__(self) -> int:
        return len(self.load())


@dataclasses.dataclass(frozen=True)
class Model:
    """A stage's trained model (its run directory) and what its evaluation measured."""

    path: str
    key: str
    run_dir: Path | None = None

    @property
    def eval(self) -> dict[str, Any]:
        return Run(self.run_dir).summary().get("eval", {}) if self.run_dir else {}


def _params(obj: Any) -> Any:
    """JSON-able description of stage parameters (callables by qualified name)."""
    if callable(obj) and not isinstance(obj, type):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    if isinstance(obj, dict):
        return {str(k): _params(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_params(v) for v in obj]
    if isinstance(obj, (Rows, Model, Endpoint)):
        return obj.key
    return obj


class PipelineContext:
    """What a pipeline adapter's ``pipeline(hp, ctx)`` may call (module docstring)."""

    def __init__(self, spec: RunSpec, run: Run, start_model: str) -> None:
        self.spec = spec
        self.run = run
        self.stages_dir = run.path / "stages"
        self.start = Model(start_model, content_key({"start": start_model}, 16))
        self.log: list[dict[str, Any]] = []
        self.rounds: dict[int, dict[str, Any]] = {}

    # ---- inputs

    def world_rows(self, split: str) -> Rows:
        """Rows of a split of the data world (``sft``, ``prompts``, ``judge``, ``redteam`` ...), or of
        ``data.source`` itself for hub / local data (``split`` then names its split)."""
        world = spec_world(self.spec)
        if world.name != "dataset":
            path = world.split_path(split)
        elif Path(self.spec.data.source).is_file():
            path = Path(self.spec.data.source)
        else:
            raise PipelineError(f"pipelines read rows from a built-in world or a local data file, not {self.spec.data.source!r}")
        return Rows(Path(path), content_key({"file": str(path), "mtime": os.path.getmtime(path),
                                             "size": os.path.getsize(path)}, 16))

    # ---- stages

    def _stage(self, name: str, kind: str, params: dict[str, Any], inputs: Sequence[Any]) -> tuple[Run | None, str]:
        key = content_key({"v": STAGE_VERSION, "kind": kind, "params": _params(params),
                           "inputs": [_params(i) for i in inputs]}, 24)
        d = self.stages_dir / name
        if d.exists():
            r = Run(d)
            st = r.status().get("status")
            # a train stage carries its key in its config's tags from the start (a kill between its
            # completion and the summary update must not orphan it); other stages in the summary
            made_by = r.summary().get("pipeline_key") or r.config().get("tags", {}).get("pipeline_key")
            if st == "completed" and made_by == key:
                self.log.append({"stage": name, "kind": kind, "key": key, "reused": True})
                return r, key
            if st == "completed":
                raise PipelineError(
                    f"stage {name!r} of {self.run.path} was computed from another recipe (its key "
                    f"{made_by} != {key}); run the changed pipeline under another name="
                )
        return None, key

    def _begin(self, name: str, kind: str, key: str, params: dict[str, Any], inputs: Sequence[Any]) -> Run:
        d = self.stages_dir / name
        if d.exists():
            shutil.rmtree(d)  # an unfinished stage is redone from scratch
        r = Run.create(self.stages_dir, name, prefix=kind)
        r.write_config({"stage": name, "kind": kind, "params": _params(params), "inputs": [_params(i) for i in inputs],
                        "pipeline": self.run.name, "pipeline_key": key})
        r.set_status("running", pid=os.getpid(), host=os.uname().nodename)
        return r

    def _finish(self, r: Run, key: str, kind: str, **summary: Any) -> None:
        r.write_summary({"pipeline_key": key, "kind": kind, "status": "completed", **summary})
        r.set_status("completed")
        self.log.append({"stage": r.name, "kind": kind, "key": key, "reused": False})

    def world_resource(self, name: str) -> str:
        """A named text the data world ships for methods (e.g. ``judge_rubric``, ``constitution``:
        a world lists them in ``resources()``)."""
        world = spec_world(self.spec)
        resources = world.resources() if hasattr(world, "resources") else {}
        if name not in resources:
            raise PipelineError(f"the data world {self.spec.data.source!r} has no resource {name!r}; "
                                f"it has {sorted(resources)}")
        return str(resources[name])

    def endpoint(self, model: str) -> Endpoint:
        """``openai:<model>`` as an endpoint generator, at ``reward.judge_base_url`` with the key in
        ``reward.judge_api_key_env`` (the run's one endpoint setting)."""
        return Endpoint(model.removeprefix("openai:"), self.spec.reward.judge_base_url, self.spec.reward.judge_api_key_env)

    def generate(self, name: str, *, model: Model | Endpoint, prompts: Rows, n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 32, template: str | None = None,
                 prompt_field: str = "prompt", out_field: str = "completion", seed: int = 0,
                 max_rows: int | None = None, max_prompt_length: int | None = None) -> Rows:
        """Sample ``n`` completions per row from ``model`` (a stage's model, or an :class:`Endpoint`);
        the prompt is ``row[prompt_field]`` or ``template.format(**row)``, its start cut beyond
        ``max_prompt_length`` tokens (None: ``train.max_prompt_length``; few-shot prompts need
        more).  One output row per (row, sample): the input row plus ``out_field``,
        ``input_index``, ``sample_index`` and ``n_tokens`` (None from an endpoint, which returns text)."""
        limit = max_prompt_length or self.spec.train.max_prompt_length
        params = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, template=template,
                      prompt_field=prompt_field, out_field=out_field, seed=seed, max_rows=max_rows,
                      max_prompt_length=limit)
        done, key = self._stage(name, "generate", params, [model, prompts])
        if done is not None:
            return Rows(done.path / "rows.jsonl", key)
        r = self._begin(name, "generate", key, params, [model, prompts])
        t0 = time.perf_counter()
        rows = prompts.load()[:max_rows] if max_rows else prompts.load()
        texts = [template.format(**row) if template else row[prompt_field] for row in rows]
        if isinstance(model, Endpoint):
            answers = chat_complete(model, texts, n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                    seed=seed, workers=self.spec.reward.judge_workers,
                                    max_retries=self.spec.reward.judge_max_retries)
            out = [{**rows[i], out_field: text.strip(), "input_index": i, "sample_index": s, "n_tokens": None}
                   for i, texts_i in enumerate(answers) for s, text in enumerate(texts_i)]
        else:
            lm, tok = load_causal_lm(model.path)
            sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                num_return_sequences=n, seed=seed)
            comps = generate(lm, tok, texts, sp, batch_size=self.spec.eval.batch_size,
                             max_prompt_length=limit)
            out = [{**rows[c.prompt_index], out_field: c.text, "input_index": c.prompt_index,
                    "sample_index": c.sample_index, "n_tokens": c.n_tokens} for c in comps]
        _write_rows(r.path / "rows.jsonl", out)
        self._finish(r, key, "generate", n_rows=len(out), wall_time_s=time.perf_counter() - t0,
                     model=model.key if isinstance(model, Endpoint) else model.path)
        return Rows(r.path / "rows.jsonl", key)

    def transform(self, name: str, fn: Callable[..., TransformResult], *inputs: Rows, **params: Any) -> Rows:
        """Rows built by a pure function of input rows (``fn(*rows_lists, **params)``): pairs,
        filters, mixtures.  ``fn`` may also return ``(rows, stats)`` to record statistics."""
        done, key = self._stage(name, "transform", {"fn": fn, **params}, inputs)
        if done is not None:
            return Rows(done.path / "rows.jsonl", key)
        r = self._begin(name, "transform", key, {"fn": fn, **params}, inputs)
        result = fn(*[i.load() for i in inputs], **params)
        rows: list[dict[str, Any]]
        stats: dict[str, Any]
        rows, stats = result if isinstance(result, tuple) else (result, {})
        if not rows:
            r.set_status("failed", error=f"stage {name} produced no rows ({stats})")
            raise PipelineError(f"stage {name!r} produced no rows ({stats or 'no statistics'}); nothing to train on")
        _write_rows(r.path / "rows.jsonl", rows)
        self._finish(r, key, "transform", n_rows=len(rows), stats=stats)
        return Rows(r.path / "rows.jsonl", key)

    def score(self, name: str, rows: Rows, *, scorer: str = "gold", prompt_field: str = "prompt",
              response_field: str = "completion", out_field: str = "score") -> Rows:
        """Each row scored by one of the data world's named scorers (``harness worlds``)."""
        world = spec_world(self.spec)
        scorers = world.scorers()
        if scorer not in scorers and not (scorer == "gold" and world.gold_scorer() is not None):
            raise PipelineError(f"stage {name!r}: the data world has no scorer {scorer!r}; it has {sorted(scorers)}")
        sc = world.gold_scorer() if scorer == "gold" else scorers[scorer]
        params = {"scorer": sc.identity, "prompt_field": prompt_field, "response_field": response_field,
                  "out_field": out_field}
        done, key = self._stage(name, "score", params, [rows])
        if done is not None:
            return Rows(done.path / "rows.jsonl", key)
        r = self._begin(name, "score", key, params, [rows])
        out = [{**row, out_field: sc(row[prompt_field], row[response_field])} for row in rows.load()]
        _write_rows(r.path / "rows.jsonl", out)
        self._finish(r, key, "score", n_rows=len(out), scorer=sc.identity)
        return Rows(r.path / "rows.jsonl", key)

    # ---- self-judging stages (Self-Rewarding, Constitutional AI)

    def stats(self, rows: Rows) -> dict[str, Any]:
        """What the stage that made ``rows`` recorded: a transform's ``stats``, or the counts of a
        judge / choose / generate / score stage's summary."""
        summary = Run(rows.path.parent).summary()
        if summary.get("pipeline_key") != rows.key:
            raise PipelineError(f"{rows.path.parent} holds no completed stage with key {rows.key}")
        return dict(summary.get("stats") or {k: v for k, v in summary.items() if k not in ("pipeline_key", "status")})

    def model(self, name: str) -> Model | Endpoint:
        """A generator or judge the user named: ``openai:<model>`` is an endpoint
        (:meth:`endpoint`); anything else a local model (a directory, a run directory, or a
        world base such as ``<world>:<size>``, built if needed), keyed by its weights."""
        if name.startswith("openai:"):
            return self.endpoint(name)
        built = ensure_model(name, world_options(self.spec.data))
        path = resolve_model_dir(str(built or name))
        if not Path(path).exists():
            raise PipelineError(f"model {name!r} is neither a local model directory, a run, a world base model "
                                "nor openai:<model>")
        return Model(path, content_key({"weights": weights_fingerprint(path)}, 16))

    def _sample(self, model: Model | Endpoint, texts: list[str], *, n: int, temperature: float, top_p: float,
                max_new_tokens: int, seed: int, max_prompt_length: int | None) -> list[list[str]]:
        """``n`` sampled answers per prompt text, in order, from a local model or an endpoint."""
        if isinstance(model, Endpoint):
            return chat_complete(model, texts, n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 seed=seed, workers=self.spec.reward.judge_workers,
                                 max_retries=self.spec.reward.judge_max_retries)
        lm, tok = load_causal_lm(model.path)
        sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            num_return_sequences=n, seed=seed)
        comps = generate(lm, tok, texts, sp, batch_size=self.spec.eval.batch_size, max_prompt_length=max_prompt_length)
        out: list[list[str]] = [[] for _ in texts]
        for c in comps:
            out[c.prompt_index].append(c.text)
        return out

    def judge(self, name: str, *, model: Model | Endpoint, rows: Rows, template: str, n: int = 3,
              temperature: float = 0.7, top_p: float = 1.0, max_new_tokens: int = 32,
              parse: Callable[[str], float | None] = self_reward_score, out_field: str = "self_score",
              seed: int = 0, max_prompt_length: int | None = None) -> Rows:
        """Each row judged ``n`` times by ``model`` (LLM-as-a-judge): the prompt is
        ``template.format(**row)``; every sampled judgement is parsed by ``parse`` (a pure
        function: text -> score, or None when the text is not a valid judgement).  Each output
        row is the input row plus ``judgements`` (the texts), ``judge_scores`` (the valid
        scores), ``n_malformed`` and ``out_field``: the mean of the valid scores, or None when
        no judgement was valid -- a malformed judgement is counted and skipped, never scored.
        The stage summary counts judgements, malformed ones, rows left unscored and prompts
        cut to ``max_prompt_length`` tokens (default ``train.max_prompt_length``; the start of
        a longer prompt is cut, as in :meth:`generate`)."""
        limit = max_prompt_length or self.spec.train.max_prompt_length
        params = dict(template=template, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                      parse=parse, out_field=out_field, seed=seed, max_prompt_length=limit)
        done, key = self._stage(name, "judge", params, [model, rows])
        if done is not None:
            return Rows(done.path / "rows.jsonl", key)
        r = self._begin(name, "judge", key, params, [model, rows])
        t0 = time.perf_counter()
        src = rows.load()
        try:
            texts = [template.format(**row) for row in src]
        except KeyError as e:
            raise PipelineError(f"stage {name!r}: the judge template names {e} but the rows have "
                                f"{sorted(src[0]) if src else 'no columns'}") from None
        truncated = 0
        if not isinstance(model, Endpoint):
            from harness.modeling.generation import load_tokenizer

            tok = load_tokenizer(resolve_model_dir(model.path))
            truncated = sum(len(ids) > limit for ids in encode_prompts(tok, texts, None))
        answers = self._sample(model, texts, n=n, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed,
                               max_prompt_length=None if isinstance(model, Endpoint) else limit)
        out: list[dict[str, Any]] = []
        malformed_examples: list[str] = []
        for row, judged in zip(src, answers):
            mean, valid, bad = mean_judgement(judged, parse)
            if bad and len(malformed_examples) < 5:
                malformed_examples += [t for t in judged if parse(t) is None][:1]
            out.append({**row, "judgements": judged, "judge_scores": valid, "n_malformed": bad, out_field: mean})
        _write_rows(r.path / "rows.jsonl", out)
        n_judgements = sum(len(a) for a in answers)
        n_malformed = sum(o["n_malformed"] for o in out)
        self._finish(r, key, "judge", n_rows=len(out), n_judgements=n_judgements, n_malformed=n_malformed,
                     n_unscored=sum(o[out_field] is None for o in out), n_truncated_prompts=truncated,
                     malformed_examples=malformed_examples, wall_time_s=time.perf_counter() - t0,
                     model=model.key if isinstance(model, Endpoint) else model.path)
        return Rows(r.path / "rows.jsonl", key)

    def choose(self, name: str, *, model: Model | Endpoint, rows: Rows, prompt_field: str = "choice_prompt",
               options: Sequence[str] = ("(A)", "(B)"), out_field: str = "p_options", n: int = 8,
               temperature: float = 1.0, seed: int = 0) -> Rows:
        """Multiple-choice feedback on each row's ``prompt_field`` (a question that lists
        options labelled like ``options``).  A local model: the log-probability of each option
        text as the start of its answer after the chat-rendered prompt (summed over the
        option's tokens, ``option_logps``), normalised over the options -> ``out_field`` (one
        probability per option).  An endpoint (text only): ``n`` sampled answers, each read
        as the one option it names ("(A)", "A", "The answer is (A)"), and each option's share
        of the readable ones; unreadable answers are counted (``n_malformed``).  A row whose
        prompt does not fit a local model's positions, or with no readable answer, gets None:
        counted in the summary, never a guess."""
        options = tuple(options)
        if len(options) < 2 or len(set(options)) != len(options):
            raise PipelineError(f"stage {name!r}: choose needs two or more distinct options, got {options}")
        params = dict(prompt_field=prompt_field, options=list(options), out_field=out_field, n=n,
                      temperature=temperature, seed=seed)
        done, key = self._stage(name, "choose", params, [model, rows])
        if done is not None:
            return Rows(done.path / "rows.jsonl", key)
        r = self._begin(name, "choose", key, params, [model, rows])
        t0 = time.perf_counter()
        src = rows.load()
        prompts = [row[prompt_field] for row in src]
        stats: dict[str, Any] = {"n_too_long": 0, "n_malformed": 0, "n_unanswered": 0}
        if isinstance(model, Endpoint):
            answers = self._sample(model, prompts, n=n, temperature=temperature, top_p=1.0, max_new_tokens=16,
                                   seed=seed, max_prompt_length=None)
            out = []
            for row, texts in zip(src, answers):
                named = [_named_option(t, options) for t in texts]
                valid = [k for k in named if k is not None]
                stats["n_malformed"] += len(named) - len(valid)
                probs = [valid.count(k) / len(valid) for k in range(len(options))] if valid else None
                stats["n_unanswered"] += probs is None
                out.append({**row, "feedback": texts, out_field: probs})
        else:
            lm, tok = load_causal_lm(model.path)
            pids = encode_prompts(tok, prompts, None)
            oids = [list(tok(o, add_special_tokens=False)["input_ids"]) for o in options]
            limit = getattr(lm.config, "max_position_embeddings", None)
            fits = [limit is None or len(p) + max(map(len, oids)) <= limit for p in pids]
            comps = [Completion(i, k, o, pids[i], oids[k]) for i in range(len(src)) if fits[i]
                     for k, o in enumerate(options)]
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            lps = completion_logprobs(lm, comps, int(pad or 0), batch_size=self.spec.eval.batch_size).tolist()
            by_row: dict[int, list[float]] = {}
            for c, lp in zip(comps, lps):
                by_row.setdefault(c.prompt_index, []).append(lp)
            out = []
            for i, row in enumerate(src):
                if i not in by_row:
                    stats["n_too_long"] += 1
                    out.append({**row, "option_logps": None, out_field: None})
                    continue
                lp = by_row[i]
                top = max(lp)
                z = [math.exp(v - top) for v in lp]
                out.append({**row, "option_logps": lp, out_field: [v / sum(z) for v in z]})
        _write_rows(r.path / "rows.jsonl", out)
        self._finish(r, key, "choose", n_rows=len(out), n_unscored=sum(o[out_field] is None for o in out), **stats,
                     wall_time_s=time.perf_counter() - t0,
                     model=model.key if isinstance(model, Endpoint) else model.path)
        return Rows(r.path / "rows.jsonl", key)

    def train(self, name: str, *, data: Rows | None, method: dict[str, Any], model: Model,
              reference: Model | None = None, round: int | None = None,
              overrides: dict[str, Any] | None = None) -> Model:
        """An ordinary run of ``method`` (a method section: ``{"name": "dpo", "beta": 0.1}``) from
        ``model`` on ``data`` (None: the method's own data kind from the data world), evaluated
        like any run against the pipeline's starting model, tagged with the pipeline and round."""
        raw = spec_to_dict(self.spec)
        for k in ("tags", "name", "output_dir"):
            raw.pop(k, None)
        raw["method"] = dict(method)
        raw["model"] = {**raw.get("model", {}), "name_or_path": model.path,
                        "reference": reference.path if reference is not None else None}
        if data is not None:
            raw["data"] = {**raw.get("data", {}), "source": str(data.path), "split": "train", "eval_split": None}
        raw.setdefault("eval", {})
        world = spec_world(self.spec)
        if data is not None and world.name != "dataset" and raw["eval"].get("world") is None:
            raw["eval"]["world"] = self.spec.data.source  # rounds train on files, are evaluated on the world
        if raw["eval"].get("baseline") is None:
            raw["eval"]["baseline"] = self.start.path
        raw["train"] = {**raw.get("train", {}), "resume_from": None}
        raw = merge_raw(raw, overrides or {})
        params = {"spec": raw}
        done, key = self._stage(name, "train", params, [model, reference, data])
        if done is not None:
            return self._trained(Model(str(done.final_dir), key, done.path), round)
        d = self.stages_dir / name
        ckpts = Run(d).checkpoints() if d.exists() else []
        if d.exists() and ckpts and Run(d).config().get("tags", {}).get("pipeline_key") == key:
            raw["train"]["resume_from"] = str(ckpts[-1])  # a killed train stage resumes from its last checkpoint
        elif d.exists():
            shutil.rmtree(d)
        raw["name"], raw["output_dir"] = name, str(self.stages_dir)
        raw["tags"] = {**self.spec.tags, "pipeline": self.run.name, "pipeline_key": key, "stage": name,
                       **({"round": round} if round is not None else {})}
        spec = resolve(raw)
        r = execute(spec)
        r.update_summary(pipeline_key=key)
        self.log.append({"stage": name, "kind": "train", "key": key, "reused": False})
        return self._trained(Model(str(r.final_dir), key, r.path), round)

    def _trained(self, m: Model, round: int | None) -> Model:
        if round is not None:
            self.record_round(round, m)
        return m

    def record_round(self, round: int, model: Model, **extra: Any) -> None:
        """Attach a round's model (and extra per-round measurements) to the pipeline summary."""
        entry = self.rounds.setdefault(round, {"round": round})
        if model.run_dir is not None:
            entry.update({"stage": model.run_dir.name, "run": str(model.run_dir), "eval": model.eval})
        entry.update(extra)

    # ---- named models and reports (data recipes: Self-Instruct, Alpaca)

    def model_ref(self, name: str | None) -> Model | Endpoint:
        """A model a method's hyperparameters name (a generator, a teacher, a student): None -> the
        pipeline's starting model; ``openai:<model>`` -> :meth:`endpoint`; a world base model
        (``<world>:<size>``, built if needed), a run directory or a model directory / hub id -> a
        :class:`Model` usable by :meth:`generate` and :meth:`train`."""
        if name is None:
            return self.start
        if name.startswith("openai:"):
            return self.endpoint(name)
        from harness.modeling.generation import resolve_model_dir
        from harness.training.runner import ensure_model
        from harness.worlds.base import world_options

        path = resolve_model_dir(str(ensure_model(name, world_options(self.spec.data)) or name))
        return Model(path, content_key({"model": path}, 16))

    def write_report(self, name: str, data: dict[str, Any], markdown: str) -> Path:
        """``<pipeline run>/<name>.json`` and ``<name>.md``: a method's own account of its run (data
        statistics, comparisons), written atomically; returns the Markdown file's path."""
        atomic_write_json(self.run.path / f"{name}.json", data)
        md = self.run.path / f"{name}.md"
        atomic_write_text(md, markdown)
        return md


def _named_option(text: str, options: Sequence[str]) -> int | None:
    """The index of the one option an answer names: a label in parentheses anywhere ("The
    answer is (A)") when exactly one distinct label appears, else the whole answer being one
    label with optional punctuation ("A", "a.", "(B)"); None otherwise."""
    labels = [o.strip("() ").upper() for o in options]
    found = {m.upper() for m in re.findall(r"\(([A-Za-z])\)", text)} & set(labels)
    if len(found) == 1:
        return labels.index(found.pop())
    m = re.fullmatch(r"\W*([A-Za-z])\W*", text.strip())
    if m and not found and m.group(1).upper() in labels:
        return labels.index(m.group(1).upper())
    return None


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def write_pipeline_summary(ctx: PipelineContext, final: Model, t_start: float) -> dict[str, Any]:
    rounds = [ctx.rounds[k] for k in sorted(ctx.rounds)]
    summary = {
        "method": ctx.spec.method_name, "status": "completed", "pipeline": True, "stages": ctx.log,
        "rounds": rounds, "final_model": final.path, "model_path": ctx.start.path,
        # the last round's evaluation is the pipeline's (what a sweep objective reads)
        "eval": final.eval, "wall_time_s": time.perf_counter() - t_start,
    }
    atomic_write_json(ctx.run.path / "summary.json", summary)
    link = ctx.run.final_dir
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    os.symlink(os.path.relpath(final.path, ctx.run.path), link)
    return summary


