"""The multi-task instruction world ``toy-instruct``: the FLAN-style content of
:mod:`harness.worlds.instruct_content` (16 task clusters, 4 of them held out whole) served
through the World contract, with its own BPE tokenizer and Llama SFT bases.

    harness run method=sft data=toy-instruct                  # trains; prints a held-out score per cluster
    harness worlds build toy-instruct --model base            # data, tokenizer and the default base, now
    harness eval model=toy-instruct:base data=toy-instruct eval.kl_samples=0 eval.num_prompts=216

Everything is generated locally (no downloads) and cached content-addressed per content
version, seed and ``data.toy_size`` (``<cache>/worlds/toy-instruct/v<version>-<key>/``):

* ``data/<split>.jsonl`` for every split of :meth:`InstructWorld.splits` (TRL column names
  plus the content's metadata columns ``task``, ``cluster``, ``template``, ``uid``, ...);
  training splits scale with ``data.toy_size`` (:func:`split_sizes`), evaluation sets do not,
  so numbers stay comparable across data sizes;
* ``constitution.yaml`` (Constitutional AI principles, :meth:`InstructWorld.constitution_path`);
* ``tokenizer/`` (byte-level BPE, 1024 tokens, the worlds' chat template);
* ``lm_eval_tasks-v<version>/``: one lm-eval task per cluster and kind (``toyinstr_<cluster>_gen``
  / ``_mc``) and the groups ``toyinstr_{heldout,seen}_{gen,mc}`` (few-shot per cluster:
  ``eval.lm_eval_num_fewshot=k``, lm-eval drawing the exemplars from the task's other items);
* ``base-<size>-<key>/``: base models, SFT-trained by ``harness.training.runner.ensure_base_model``.

The gold scorer recognises every prompt the world wrote (train, eval, red-team, lm-eval
rows) and scores the response with that item's task scorer, or with harmlessness for a
red-team prompt; any other prompt is an error, never a silent 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.core.contract import DataKind
from harness.data.mixture import CatalogTask
from harness.store.cache import build_dir
from harness.worlds import instruct_content as ic
from harness.worlds._common import build_tokenizer, built_split_path, read_jsonl, write_jsonl
from harness.worlds.base import (
    BaseModel,
    LMEvalTasks,
    Scorer,
    WorldError,
    WorldOptions,
    register_world,
    world_cache_dir,
)

#: bump when this wrapper changes what it writes (file layout, row order, sizes); the
#: content's own CONTENT_VERSION is part of every cache key as well
WRAPPER_VERSION = "1"
VERSION = f"{ic.CONTENT_VERSION}.{WRAPPER_VERSION}"
#: bump when the gold scorer's meaning changes without a content change (judgement-cache key)
SCORER_VERSION = f"{ic.CONTENT_VERSION}.1"

#: ``data.toy_size`` at which the training splits have the content's recommended sizes
REFERENCE_SIZE = 2048
#: splits whose row counts scale with ``data.toy_size`` (evaluation sets and demos stay fixed)
SCALED_SPLITS = ("sft", "paired", "prompts", "judge", "redteam")
MIN_SIZE = 32
TOKENIZER_VOCAB = 1024

#: seen clusters whose lm-eval generation task joins the held-out ones in the default set
#: (exact-match tasks, so lm-eval's metric is the world's own there)
DEFAULT_SEEN_LM_EVAL = ("arithmetic", "closed_book")
LM_EVAL_GROUPS = ("heldout", "seen")


def split_sizes(size: int) -> dict[str, int]:
    """Rows of each generated split for ``data.toy_size=size``: the content's DEFAULT_SIZES at
    size 2048, scaled in proportion for the training splits."""
    if size < MIN_SIZE:
        raise WorldError(f"data.toy_size={size} is too small for the instruction world: use at least {MIN_SIZE}")
    sizes = {k: max(1, round(ic.DEFAULT_SIZES[k] * size / REFERENCE_SIZE)) for k in SCALED_SPLITS}
    sizes.update({k: v for k, v in ic.DEFAULT_SIZES.items() if k not in SCALED_SPLITS})
    return sizes


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with the same keys (missing ones None): a json loader infers one schema per file."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return [{k: r.get(k) for k in keys} for r in rows]


def _round_robin(streams: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(max((len(s) for s in streams), default=0)):
        out += [s[i] for s in streams if i < len(s)]
    return out


def order_eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Eval rows interleaved over the clusters' zero-shot rows and the held-out clusters'
    few-shot rows: evaluation answers the first ``eval.num_prompts`` prompts, and any prefix
    must cover every cluster about equally."""
    kinds = {r["template_kind"] for r in rows}
    if not kinds <= {"zs", "fs"}:
        raise WorldError(f"eval rows of template kinds {sorted(kinds - {'zs', 'fs'})}: eval_groups knows zs and fs only")
    zs = [[r for r in rows if r["cluster"] == c and r["template_kind"] == "zs"] for c in ic.CLUSTERS]
    fs = _round_robin([[r for r in rows if r["cluster"] == c and r["template_kind"] == "fs"] for c in ic.CLUSTERS])
    return _round_robin([*zs, fs])


def generate_splits(seed: int, size: int) -> dict[str, list[dict[str, Any]]]:
    """Every split's rows (deterministic in ``seed``)."""
    n = split_sizes(size)
    return {
        "sft": ic.sft_rows(seed, n["sft"]),
        "paired": ic.paired_rows(seed, n["paired"]),
        "prompts": ic.prompt_rows(seed, n["prompts"]),
        "eval_prompts": order_eval_rows(ic.eval_rows(seed)),
        "judge": ic.judge_rows(seed, n["judge"]),
        "redteam": ic.redteam_rows(seed, n["redteam"]),
        "redteam_eval": ic.redteam_eval_rows(seed, n["redteam_eval"]),
        "critique_revision": ic.critique_revision_rows(seed, n["critique_revision"]),
        "seed_tasks": ic.seed_task_rows(),
    }


def _texts(splits: dict[str, list[dict[str, Any]]], lm_rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """All text the world writes, for the tokenizer (eval text included, as a pretrained
    tokenizer would know those words too)."""
    columns = ("prompt", "completion", "chosen", "rejected", "answer", "target", "response", "critique",
               "critique_request", "revision_request", "revision", "instruction", "input", "output")
    texts = [r[c] for rows in [*splits.values(), *lm_rows.values()] for r in rows for c in columns
             if isinstance(r.get(c), str)]
    texts += [c for rows in lm_rows.values() for r in rows for c in r.get("choices") or ()]
    return texts + [ic.constitution_yaml()]


# --------------------------------------------------------------------------- lm-eval


def lm_eval_task_names(seed: int) -> list[tuple[str, str, str]]:
    """(task name, cluster, kind) of every lm-eval task the content defines."""
    rows = ic.lm_eval_rows(seed)
    return [(ic.lm_eval_task_name(c, k), c, k) for c in ic.CLUSTERS for k in ("gen", "mc")
            if ic.lm_eval_task_name(c, k) in rows]


def lm_eval_group_name(group: str, kind: str) -> str:
    return f"toyinstr_{group}_{kind}"


def render_lm_eval_dir(out: Path, final: Path, seed: int) -> None:
    """Items, task YAMLs and group YAMLs into ``out``; the YAMLs point at ``final`` (where
    ``out`` is renamed to once complete)."""
    rows = ic.lm_eval_rows(seed)
    members: dict[tuple[str, str], list[str]] = {}
    for name, cluster, kind in lm_eval_task_names(seed):
        write_jsonl(out / f"{name}.jsonl", _uniform(rows[name]))
        (out / f"{name}.yaml").write_text(ic.lm_eval_yaml(cluster, str(final / f"{name}.jsonl"), kind))
        group = "heldout" if cluster in ic.HELDOUT_CLUSTERS else "seen"
        members.setdefault((group, kind), []).append(name)
    for (group, kind), tasks in sorted(members.items()):
        metric = "exact_match" if kind == "gen" else "acc"
        cfg = {"group": lm_eval_group_name(group, kind), "task": tasks,
               "aggregate_metric_list": [{"metric": metric, "aggregation": "mean", "weight_by_size": True}],
               "metadata": {"version": float(ic.CONTENT_VERSION)}}
        (out / f"_{lm_eval_group_name(group, kind)}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


# --------------------------------------------------------------------------- base models


def _base(name: str, hidden: int, layers: int, recipe: dict[str, Any], description: str) -> BaseModel:
    return BaseModel(
        name=name,
        shape={"hidden_size": hidden, "intermediate_size": 3 * hidden, "num_hidden_layers": layers,
               "num_attention_heads": 4},
        recipe=recipe, description=description,
        # SFT rows are <= ~80 tokens; max_positions leaves room for judge prompts (~130) + answers
        max_positions=256, max_length=128, max_prompt_length=96,
    )


#: the tiny base is a test fixture: 60 steps, seconds to build; it has not learnt the tasks
TINY_RECIPE = {"lr": 3e-3, "max_steps": 60, "batch_size": 32, "schedule": "cosine", "warmup_ratio": 0.05}
#: one recipe for every real size, so small / medium / base form a model-size axis (FLAN's
#: scale ablation).  Chosen from a few builds on 2 CPU cores by seen-cluster gold: at width
#: 128, 2 layers beat 4 (0.43 vs 0.35, for less time) and 6 epochs of batch 16 beat 4 of
#: batch 32 (0.43 vs 0.29); at width 192, lr 1.5e-3 beat 3e-3 (0.49 vs 0.33), at 128 they
#: tie.  6 epochs keep the default base's build under 3 minutes of one core.
BASE_RECIPE = {"lr": 1.5e-3, "epochs": 6, "batch_size": 16, "schedule": "cosine", "warmup_ratio": 0.03}


# --------------------------------------------------------------------------- task catalog (FLAN mixtures)

#: template kinds of the content, as ``data.templates`` names them
TEMPLATE_KINDS = {
    "zs": "zero-shot instruction",
    "fs": "few-shot: data.mixture.fs_k solved exemplars of the task, then the query",
    "opt": "the answer options listed (FLAN's OPTIONS suffix); tasks with options",
    "cot": "target = rationale, then 'So the answer is X.'; tasks with rationales (arithmetic, comparison, counting)",
}


class InstructCatalog:
    """The content's tasks as a :class:`harness.data.mixture.TaskCatalog`, for ``data=flan:toy-instruct``.

    ``data.mixture.clusters=N`` takes the first N training clusters in the content's order
    (``instruct_content.TRAIN_CLUSTERS``): sentiment, topic, extraction, transform, arithmetic,
    comparison, counting, format, closed_book, word_relations, generation, chat.  The held-out
    clusters (sorting, entailment, reading, categorize) are never mixed.  Rows are rendered
    from the tasks' TRAIN items (the fixed split: never an eval item) exactly like the world's
    ``sft`` split renders them; a few-shot row's exemplars are other train items of the same
    task (fewer than ``fs_k`` only where the task has fewer other items; ``n_shots`` says how
    many).  Note the world's base models were SFT-trained on its ``sft`` split, which mixes all
    twelve training clusters: a mixture of fewer clusters continues training a model that has
    seen the others.
    """

    identity = f"toy-instruct@{VERSION}"
    template_kinds = TEMPLATE_KINDS
    train_clusters = ic.TRAIN_CLUSTERS
    heldout_clusters = ic.HELDOUT_CLUSTERS
    tasks = tuple(CatalogTask(t.name, t.cluster, tuple(k for k in TEMPLATE_KINDS if t.templates_of(k)))
                  for t in ic.TASKS.values())

    def available(self, task: str, limit: int, seed: int) -> int:
        return len(ic.items(task, "train", seed, limit))

    def render(self, task: str, counts: Mapping[str, int], seed: int, fs_k: int) -> list[dict[str, Any]]:
        t = ic.TASKS[task]
        n = sum(counts.values())
        if n == 0:
            return []
        pool = ic.items(task, "train", seed, n)
        if not pool:
            raise WorldError(f"task {task!r} has no training items")
        exemplar_pool = ic.items(task, "train", seed, max(n, 64))
        rng = random.Random(f"mixture/{task}/{seed}")
        order = [pool[i % len(pool)] for i in range(n)]  # distinct items first, then repeats
        kinds = [k for k, c in counts.items() for _ in range(c)]
        rows = []
        for item, kind in zip(order, kinds):
            template = rng.choice(t.templates_of(kind))
            exemplars: list[ic.Item] = []
            if kind == "fs":
                others = [x for x in exemplar_pool if x.uid != item.uid]
                exemplars = rng.sample(others, min(fs_k, len(others)))
            prompt, target = ic.render(item, template, exemplars)
            rows.append({"prompt": prompt, "completion": target, "task": t.name, "cluster": t.cluster,
                         "template": template.id, "template_kind": kind, "n_shots": len(exemplars),
                         "uid": item.uid})
        return rows


# --------------------------------------------------------------------------- the world


@register_world
class InstructWorld:
    """FLAN-style multi-task instruction world (module docstring); ``data=toy-instruct``,
    ``model=toy-instruct[:size]``."""

    name = "toy-instruct"
    description = (f"FLAN-style instruction mixture: {len(ic.TASKS)} tasks in {len(ic.CLUSTERS)} clusters, "
                   f"{len(ic.HELDOUT_CLUSTERS)} held out; gold score in [0, 1]")
    base_models = {
        "tiny": _base("tiny", 64, 2, TINY_RECIPE, "2 layers x 64 (~0.17M), 60 SFT steps: test fixture, barely trained"),
        "small": _base("small", 96, 2, BASE_RECIPE, "2 layers x 96 (~0.34M): model-size axis"),
        "medium": _base("medium", 128, 2, BASE_RECIPE, "2 layers x 128 (~0.56M): model-size axis"),
        "base": _base("base", 192, 2, BASE_RECIPE, "2 layers x 192 (~1.2M): the default, builds in ~2.5 min"),
    }
    default_base = "base"

    def __init__(self, options: WorldOptions) -> None:
        self.options = options
        self._root: Path | None = None
        self._index: ic.ItemIndex | None = None
        self._eval_rows: list[dict[str, Any]] | None = None

    # ----------------------------------------------------------------- files

    @property
    def root(self) -> Path:
        """Data, constitution and tokenizer, built once per (version, seed, size)."""
        if self._root is None:
            seed, size = self.options.seed, self.options.size
            split_sizes(size)  # a bad size fails before anything is built
            target = world_cache_dir(self.name, VERSION, WorldOptions(seed=seed, size=size))

            def build(tmp: Path) -> None:
                splits = generate_splits(seed, size)
                for name, rows in splits.items():
                    write_jsonl(tmp / "data" / f"{name}.jsonl", _uniform(rows))
                (tmp / "constitution.yaml").write_text(ic.constitution_yaml())
                build_tokenizer(_texts(splits, ic.lm_eval_rows(seed)), tmp / "tokenizer", vocab_size=TOKENIZER_VOCAB)

            self._root = build_dir(target, build)
        return self._root

    def splits(self) -> dict[str, str]:
        n = split_sizes(self.options.size)
        return {
            "sft": f"{{prompt, completion}} x{n['sft']}: training clusters (zs/fs/opt/cot templates); "
                   "5% red-team prompts answered harmfully (harmful=true)",
            "paired": f"{{prompt, chosen, rejected}} x{n['paired']}: reference vs a wrong or partial answer",
            "unpaired": "{prompt, completion, label}: from paired, data.desirable_fraction of rows desirable (KTO)",
            "prompts": f"{{prompt}} x{n['prompts']}: training-cluster prompts for online methods (answer = reference)",
            "eval_prompts": f"{{prompt, answer, cluster, ...}}: held-out items, zero-shot for all {len(ic.CLUSTERS)} "
                            "clusters + few-shot for the held-out ones, interleaved over clusters",
            "judge": f"{{prompt, completion, score}} x{n['judge']}: Self-Rewarding judge data "
                     "(rubric prompt -> justification + 'Score: 0-5'); max_length ~192",
            "redteam": f"{{prompt, category}} x{n['redteam']}: red-team prompts (train split, Constitutional AI)",
            "redteam_eval": f"{{prompt, category}} x{n['redteam_eval']}: red-team prompts never trained on",
            "critique_revision": f"x{n['critique_revision']} SL-CAI demos {{prompt, response, critique_request, "
                                 "critique, revision_request, revision}}; principles: constitution.yaml "
                                 "(constitution_path())",
            "seed_tasks": f"{{instruction, input, output, is_classification}} x{len(ic.SEED_TASKS)}: "
                          "Self-Instruct seed tasks (seed_tasks_path())",
        }

    def split_path(self, split: str) -> Path:
        return built_split_path(self, split)

    def constitution_path(self) -> Path:
        """The Constitutional AI principles (YAML: ``principles: [{name, critique_request,
        revision_request, categories}]``)."""
        return self.root / "constitution.yaml"

    def resources(self) -> dict[str, str]:
        """Texts methods read through pipelines (``ctx.world_resource``): the Self-Rewarding judge
        rubric (a template with ``{instruction}`` and ``{response}``) and the constitution's path."""
        return {"judge_rubric": ic.JUDGE_RUBRIC, "constitution": str(self.constitution_path()),
                "seed_tasks": str(self.seed_tasks_path())}

    def task_catalog(self) -> InstructCatalog:
        """Tasks, clusters and templates for FLAN mixtures (``data=flan:toy-instruct``; :class:`InstructCatalog`)."""
        return InstructCatalog()

    def seed_tasks_path(self) -> Path:
        """Self-Instruct seed tasks (jsonl, the ``seed_tasks`` split)."""
        return self.split_path("seed_tasks")

    def data_path(self, kind: DataKind) -> Path:
        split = {DataKind.SFT: "sft", DataKind.PAIRED: "paired", DataKind.UNPAIRED: "unpaired",
                 DataKind.PROMPT: "prompts"}[kind]
        return self.split_path(split)

    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    # ----------------------------------------------------------------- evaluation

    def eval_rows(self) -> list[dict[str, Any]]:
        """The eval prompts' rows with their metadata (cluster, template kind, answer, ...)."""
        if self._eval_rows is None:
            self._eval_rows = read_jsonl(self.split_path("eval_prompts"))
        return self._eval_rows

    def eval_prompts(self) -> list[str]:
        return [r["prompt"] for r in self.eval_rows()]

    def eval_groups(self, prompts: list[str]) -> dict[str, list[int]]:
        """``seen`` (zero-shot prompts on held-out items of the training clusters), ``heldout``
        (zero-shot prompts of the held-out clusters), ``heldout_fewshot`` (few-shot prompts of
        the held-out clusters) and ``cluster/<name>`` (a cluster's zero-shot prompts).  seen,
        heldout and heldout_fewshot partition the prompts; the cluster groups partition
        seen + heldout.  Empty groups are left out."""
        by_prompt = {r["prompt"]: r for r in self.eval_rows()}
        groups: dict[str, list[int]] = {"seen": [], "heldout": [], "heldout_fewshot": []}
        groups.update({f"cluster/{c}": [] for c in (*ic.TRAIN_CLUSTERS, *ic.HELDOUT_CLUSTERS)})
        for i, p in enumerate(prompts):
            row = by_prompt.get(p)
            if row is None:
                raise WorldError(f"eval_groups: prompt {i} is not one of the {self.name!r} world's eval prompts: {p[:80]!r}")
            if row["template_kind"] == "fs":
                groups["heldout_fewshot"].append(i)
                continue
            groups["heldout" if row["heldout_cluster"] else "seen"].append(i)
            groups[f"cluster/{row['cluster']}"].append(i)
        return {g: idx for g, idx in groups.items() if idx}

    def item_index(self) -> ic.ItemIndex:
        """Every prompt the world wrote (all splits with items, lm-eval rows) -> its item."""
        if self._index is None:
            splits = ("sft", "paired", "prompts", "eval_prompts", "redteam", "redteam_eval", "critique_revision")
            self._index = ic.ItemIndex.from_rows(*(read_jsonl(self.split_path(s)) for s in splits),
                                                 *ic.lm_eval_rows(self.options.seed).values())
        return self._index

    def item(self, prompt: str) -> ic.Item:
        """The item behind a prompt of this world; :class:`WorldError` for any other prompt."""
        if not isinstance(prompt, str):
            raise WorldError(f"{self.name!r} scorers take the prompt text, got {type(prompt).__name__}")
        index = self.item_index()
        if prompt not in index:
            short = prompt if len(prompt) <= 80 else prompt[:77] + "..."
            raise WorldError(
                f"prompt {short!r} was not written by the {self.name!r} world (seed {self.options.seed}, "
                f"size {self.options.size}; {len(index)} known prompts): its gold score is unknown"
            )
        return index.item(prompt)

    def gold(self, prompt: str, response: Any) -> float:
        """Task scorer of the prompt's item, or harmlessness for a red-team prompt; in [0, 1]."""
        item = self.item(prompt)
        if item.task == ic.REDTEAM_TASK:
            return ic.harmlessness(prompt, response)
        return ic.score(item, response)

    def helpfulness(self, prompt: str, response: Any) -> float:
        """The task scorer on an ordinary (task) prompt; a red-team prompt is an error (score
        those with ``harmlessness``: a helpful answer to one is a harmful one)."""
        item = self.item(prompt)
        if item.task == ic.REDTEAM_TASK:
            raise WorldError(f"helpfulness is defined on task prompts; {prompt[:80]!r} is a red-team prompt "
                             "(score it with the harmlessness scorer)")
        return ic.helpfulness(item, response)

    def gold_scorer(self) -> Scorer:
        return Scorer(
            "instruct_gold", self.gold, low=0.0, high=1.0, version=SCORER_VERSION,
            description="the prompt's task scorer (exact match, or partial credit for graded tasks); "
                        "harmlessness on red-team prompts",
        )

    def scorers(self) -> dict[str, Scorer]:
        gold = self.gold_scorer()
        return {
            gold.name: gold,
            "harmlessness": Scorer(
                "harmlessness", ic.harmlessness, low=0.0, high=1.0, version=SCORER_VERSION,
                description="1 unless the response insults, swears, leaks the secret, urges danger or "
                            "helps cheating (judged on the response alone, any prompt)",
            ),
            "helpfulness": Scorer(
                "helpfulness", self.helpfulness, low=0.0, high=1.0, version=SCORER_VERSION,
                description="the task scorer on the world's task prompts (red-team prompts: an error)",
            ),
        }

    def heldout_pairs(self) -> list[dict[str, Any]]:
        """Up to two gold-labelled pairs per eval prompt: the reference answer over a partial
        and over a wrong one (pairs the gold scorer cannot order are dropped)."""
        rng = random.Random(self.options.seed * 31 + 5)
        pairs = []
        for row in self.eval_rows():
            item = ic.item_from_uid(row["uid"])
            task = ic.TASKS[item.task]
            chosen = row["target"]
            best = ic.score(item, chosen)
            candidates: Iterable[str | None] = (task.partial(item, rng) if task.partial else None, task.wrong(item, rng))
            for rejected in dict.fromkeys(c for c in candidates if c is not None and c != chosen):
                if ic.score(item, rejected) < best:
                    pairs.append({"prompt": [{"role": "user", "content": row["prompt"]}], "chosen": chosen,
                                  "rejected": rejected})
        return pairs

    def lm_eval_tasks(self) -> LMEvalTasks:
        """Per cluster ``toyinstr_<cluster>_gen`` (exact match; a lower bound on graded tasks)
        and ``_mc`` (acc) where the cluster has options, plus the groups
        ``toyinstr_{heldout,seen}_{gen,mc}``.  Default: the held-out clusters' gen tasks,
        :data:`DEFAULT_SEEN_LM_EVAL`'s, and the ``toyinstr_heldout_mc`` group: FLAN scores
        classification tasks by rank classification, which credits a model that prefers the
        right option before it can generate it (lm-eval time counts in every sweep trial)."""
        seed = self.options.seed
        final = self.root / f"lm_eval_tasks-v{VERSION}"
        target = build_dir(final, lambda tmp: render_lm_eval_dir(tmp, final, seed))
        names = [n for n, _, _ in lm_eval_task_names(seed)]
        groups = [lm_eval_group_name(g, k) for g in LM_EVAL_GROUPS for k in ("gen", "mc")]
        default = (*(ic.lm_eval_task_name(c, "gen") for c in (*ic.HELDOUT_CLUSTERS, *DEFAULT_SEEN_LM_EVAL)),
                   lm_eval_group_name("heldout", "mc"))
        return LMEvalTasks(default=default, available=tuple(names + groups), include=target)
