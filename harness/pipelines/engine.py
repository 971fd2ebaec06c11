"""Pipelines: methods whose rounds are stages (generate, build a dataset, score, train), each a
run in the store, linked by content address, resumable stage by stage.

    harness run method=spin method.iterations=3           # runs/spin-<key>/stages/r1-generate, r1-pairs, r1-train, ...
    harness run method=spin method.iterations=3           # re-run after a kill: finished stages are reused

A pipeline adapter (one file in ``methods/``, like every method) defines
``pipeline(hp, ctx)``: plain Python that calls the :class:`PipelineContext` it is given —
``ctx.generate``, ``ctx.transform``, ``ctx.score``, ``ctx.train`` — to describe its rounds.
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
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.core.config import RunSpec, merge_raw, resolve, spec_to_dict
from harness.modeling.endpoint import Endpoint, chat_complete
from harness.modeling.generation import SamplingParams, generate, load_causal_lm
from harness.store.cache import content_key
from harness.store.runs import Run, atomic_write_json, atomic_write_text, read_jsonl
from harness.training.runner import execute
from harness.worlds.base import spec_world

#: bump when a stage kind's outputs change meaning: every stage key includes it
STAGE_VERSION = "1"


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
                 max_rows: int | None = None) -> Rows:
        """Sample ``n`` completions per row from ``model`` (a stage's model, or an :class:`Endpoint`);
        the prompt is ``row[prompt_field]`` or ``template.format(**row)``.  One output row per
        (row, sample): the input row plus ``out_field``, ``input_index``, ``sample_index`` and
        ``n_tokens`` (None from an endpoint, which returns text)."""
        params = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, template=template,
                      prompt_field=prompt_field, out_field=out_field, seed=seed, max_rows=max_rows,
                      max_prompt_length=self.spec.train.max_prompt_length)
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
                             max_prompt_length=self.spec.train.max_prompt_length)
            out = [{**rows[c.prompt_index], out_field: c.text, "input_index": c.prompt_index,
                    "sample_index": c.sample_index, "n_tokens": c.n_tokens} for c in comps]
        _write_rows(r.path / "rows.jsonl", out)
        self._finish(r, key, "generate", n_rows=len(out), wall_time_s=time.perf_counter() - t0,
                     model=model.key if isinstance(model, Endpoint) else model.path)
        return Rows(r.path / "rows.jsonl", key)

    def transform(self, name: str, fn: Callable[..., list[dict[str, Any]]], *inputs: Rows, **params: Any) -> Rows:
        """Rows built by a pure function of input rows (``fn(*rows_lists, **params)``): pairs,
        filters, mixtures.  ``fn`` may also return ``(rows, stats)`` to record statistics."""
        done, key = self._stage(name, "transform", {"fn": fn, **params}, inputs)
        if done is not None:
            return Rows(done.path / "rows.jsonl", key)
        r = self._begin(name, "transform", key, {"fn": fn, **params}, inputs)
        result = fn(*[i.load() for i in inputs], **params)
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


