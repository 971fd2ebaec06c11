"""Self-Instruct (Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated
Instructions", arXiv:2212.10560): a model writes new instructions and their instances from a
few seed tasks, the harness filters them, and the model is fine-tuned on what is kept.

    harness run method=self-instruct data=toy-instruct method.generator=toy-instruct:base method.target=2000
    harness run method=self-instruct data=toy-instruct method.seed_tasks=seed.jsonl method.rounds=4
    harness run method=self-instruct method.generator=openai:my-model reward.judge_base_url=http://127.0.0.1:8000/v1

The paper's recipe (Section 2, Figure 2), as run here:

1. **Task pool.** It starts from human-written seed tasks (the paper: 175; here
   ``method.seed_tasks``, a jsonl of ``{instruction, input, output, is_classification}``,
   default the data world's ``seed_tasks``).
2. **Instruction generation.** Each prompt shows 8 instructions of the pool, 6 seed and 2
   generated in earlier rounds (seeds fill in while fewer are generated), and asks for a new
   task; ``generator`` writes it (the policy itself by default, another local model, or an
   OpenAI-compatible endpoint: ``openai:<model>`` at ``reward.judge_base_url``).
3. **Classification task identification.** The generator is asked, after a few seed tasks
   labelled yes/no, whether the new task is a classification task (a fixed, finite set of
   output labels).  When its answer starts with neither yes nor no, a documented fallback
   heuristic decides (``harness.core.instructions.looks_like_classification``: cues such as
   "yes or no", "classify", "positive or negative", "which of"); the report counts how many
   were decided each way.
4. **Instance generation.** Input-first for other tasks (an input, then the output for that
   input), output-first for classification tasks (the class labels, then an input for each
   label), so that classification inputs are not skewed toward one label.
5. **Filtering.** An instruction joins the pool only if its ROUGE-L with every instruction
   already there is below 0.7; it is dropped when it has fewer than 4 or more than 150
   words, a word a text model cannot act on (image, graph, file, video, ...), starts with
   punctuation, a non-ASCII character or "Write a program", or repeats one exactly.
   Instances are dropped when exactly repeated, when one input has different outputs, when
   the output is empty or repeats the input; an instruction left with no instance is dropped.
6. Rounds repeat until ``target`` instructions are kept or ``rounds`` rounds have run; then
   the policy is fine-tuned (SFT) on ``instruction [+ input] -> output``.  The paper kept
   52,445 instructions and 82,439 instances from GPT-3 and fine-tuned GPT-3 on them.

Adaptations, said plainly: the paper prompts a plain LM with one long few-shot prompt per
step; the harness's generators are chat models (local prompts go through the chat template,
endpoints are chat endpoints), so each step is a short chat turn of its own and instance
generation takes two calls (input, then output; or labels, then an input per label).  A
classification task whose labels cannot be read from the generation falls back to
input-first with no input (the generator answers the instruction itself).  The prompts are
this file's own wording.  ``harness/core/instructions.py`` holds the filters and ROUGE-L.

Stages (each a run in the store, resumable; ``harness.pipelines.engine``): ``seeds``; per round
K ``rK-prompts``, ``rK-instructions`` (generate), ``rK-filter`` (every candidate with its verdict),
``rK-classify-prompts`` + ``rK-classify`` (generate), ``rK-step1-prompts`` + ``rK-step1`` (inputs
or labels), ``rK-step2-prompts`` + ``rK-step2`` (outputs or inputs), ``rK-instances`` (every
instance with its verdict); then ``data`` (the kept instructions and instances, Alpaca's
instruction/input/output columns), ``train`` (SFT of the policy; pipeline round 1), and with
``control=true`` ``control-data`` + ``control`` (SFT on the seed tasks alone, the same training
settings).  The pipeline's run directory gets ``self_instruct.md`` / ``.json``: instructions
kept and filtered by reason, the ROUGE-L of each kept instruction with its nearest seed,
instances per instruction, and the held-out scores of the fine-tuned model next to the
untuned base's and the seeds-only control's.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.config import MAX_COUNT, MAX_TOKENS, ranged
from harness.core.contract import DataKind, Paper, register_method, suggest_lr
from harness.core.instructions import (
    RougePool,
    clean_generated_line,
    histogram,
    instance_problem,
    instance_verdicts,
    instruction_problem,
    looks_like_classification,
    normalise_input,
    parse_labels,
    parse_yes_no,
)
from methods.sft import SFT

#: reasons an instruction is filtered, in the order they are checked (instruction_problem, then the pool)
INSTRUCTION_REASONS = ("empty", "too_short", "too_long", "keyword", "write_a_program", "starts_with_punctuation",
                       "non_ascii_start", "duplicate", "similar")
ROUGE_BINS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class SelfInstructConfig:
    #: seed tasks: a jsonl of {instruction, input, output, is_classification}; None: the data world's
    seed_tasks: str | None = None
    #: model that writes instructions and instances: None = the policy itself (model=), a local model
    #: (<world>:<size>, a run dir, a model dir) or openai:<model> (at reward.judge_base_url)
    generator: str | None = None
    #: stop once this many instructions are kept (the paper kept 52,445)
    target: int = ranged(52445, ge=1, le=MAX_COUNT)
    #: at most this many rounds of generation (a round = prompts_per_round prompts)
    rounds: int = ranged(8, ge=1, le=10_000)
    #: instruction-generation prompts per round
    prompts_per_round: int = ranged(64, ge=1, le=MAX_COUNT)
    #: instructions sampled per prompt
    samples_per_prompt: int = ranged(1, ge=1, le=1024)
    #: in-context instructions per prompt from the seeds (paper: 6)
    seed_in_context: int = ranged(6, ge=0, le=64)
    #: in-context instructions per prompt generated in earlier rounds (paper: 2)
    generated_in_context: int = ranged(2, ge=0, le=64)
    #: an instruction is kept only if its ROUGE-L with every pool instruction is below this (paper: 0.7)
    rouge_threshold: float = ranged(0.7, gt=0, le=1)
    #: fewest words of a kept instruction (paper: more than 3)
    min_instruction_words: int = ranged(4, ge=1, le=MAX_COUNT)
    #: most words of a kept instruction (paper: 150)
    max_instruction_words: int = ranged(150, ge=1, le=MAX_COUNT)
    #: ask the generator whether a task is classification (false: the fallback heuristic decides all)
    ask_classification: bool = True
    #: seed tasks shown as worked examples in the classification and instance prompts
    demos: int = ranged(4, ge=0, le=256)
    #: instances per instruction: inputs sampled (input-first) or labels used (output-first)
    instances_per_instruction: int = ranged(2, ge=1, le=64)
    #: sampling temperature of instruction generation (the authors' scripts: 0.7)
    temperature: float = ranged(0.7, gt=0)
    #: nucleus mass of instruction generation (the authors' scripts: 0.5)
    top_p: float = ranged(0.5, gt=0, le=1)
    #: sampling temperature of instance generation (0: greedy; then one input per instruction)
    instance_temperature: float = ranged(0.7, ge=0)
    #: longest generated instruction or instance field (tokens)
    max_new_tokens: int = ranged(48, ge=1, le=MAX_TOKENS)
    #: also fine-tune on the seed tasks alone with the same training settings (the report's control)
    control: bool = True

    def validate(self) -> None:
        if self.min_instruction_words > self.max_instruction_words:
            raise ValueError(f"min_instruction_words ({self.min_instruction_words}) is above max_instruction_words "
                             f"({self.max_instruction_words})")
        if self.seed_in_context + self.generated_in_context < 1:
            raise ValueError("seed_in_context + generated_in_context is 0: a prompt needs at least one example task")
        if self.seed_tasks is not None and not Path(self.seed_tasks).expanduser().is_file():
            raise ValueError(f"seed_tasks {self.seed_tasks!r} is not a file (a jsonl of instruction/input/output rows)")
        if self.instance_temperature == 0 and self.instances_per_instruction > 1:
            raise ValueError("instance_temperature=0 (greedy) gives one input per instruction; "
                             "set instances_per_instruction=1 or sample (instance_temperature > 0)")


# --------------------------------------------------------------------------- seeds


def file_digest(path: str) -> str:
    """sha256 of a file (a stage's key must change when the seed file's content does)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_seeds(*, path: str, digest: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The seed tasks of a jsonl file, checked row by row (every bad line named at once)."""
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e.msg})")
            continue
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            bad.append(f"line {n}: needs a non-empty string 'instruction'")
            continue
        if not isinstance(r.get("output"), str) or not isinstance(r.get("input", ""), str):
            bad.append(f"line {n}: 'output' (and 'input' when given) must be strings")
            continue
        cls = r.get("is_classification")
        if cls is not None and not isinstance(cls, bool):
            bad.append(f"line {n}: 'is_classification' must be true/false")
            continue
        rows.append({"id": str(r.get("id", f"seed-{len(rows)}")), "instruction": r["instruction"].strip(),
                     "input": r.get("input", "") or "", "output": r["output"],
                     "is_classification": bool(cls) if cls is not None else looks_like_classification(r["instruction"])})
    if bad:
        raise ValueError(f"method.seed_tasks {path}: " + "; ".join(bad[:20]) + (f" (and {len(bad) - 20} more)"
                                                                                   if len(bad) > 20 else ""))
    if not rows:
        raise ValueError(f"method.seed_tasks {path}: no seed tasks")
    return rows, {"n_seeds": len(rows), "n_classification": sum(r["is_classification"] for r in rows), "file": path}


# --------------------------------------------------------------------------- prompts (this file's wording)


def instruction_prompt(examples: list[str]) -> str:
    lines = ["Come up with a new task. Here are some tasks:"]
    lines += [f"Task {i}: {t}" for i, t in enumerate(examples, 1)]
    lines.append(f"Task {len(examples) + 1}:")
    return "\n".join(lines)


def classify_prompt(instruction: str, demos: list[dict[str, Any]]) -> str:
    lines = ["Does the task have a small fixed set of possible answers (a classification task)? Answer yes or no."]
    for d in demos:
        lines += [f"Task: {d['instruction']}", f"Answer: {'yes' if d['is_classification'] else 'no'}"]
    lines += [f"Task: {instruction}", "Answer:"]
    return "\n".join(lines)


def input_prompt(instruction: str, demos: list[dict[str, Any]]) -> str:
    lines = ["Write an input for the task. Reply with the input only, or none if the task needs no input."]
    for d in demos:
        lines += [f"Task: {d['instruction']}", f"Input: {d['input'] or 'none'}"]
    lines += [f"Task: {instruction}", "Input:"]
    return "\n".join(lines)


def labels_prompt(instruction: str, demos: list[dict[str, Any]]) -> str:
    lines = ["List the possible answers of the task, separated by commas."]
    for d in demos:
        lines += [f"Task: {d['instruction']}", f"Answers: {d['output']}, ..."]
    lines += [f"Task: {instruction}", "Answers:"]
    return "\n".join(lines)


def input_for_label_prompt(instruction: str, label: str, demos: list[dict[str, Any]]) -> str:
    lines = ["Write an input for the task whose correct answer is the given one. Reply with the input only."]
    for d in demos:
        lines += [f"Task: {d['instruction']}", f"Answer: {d['output']}", f"Input: {d['input'] or 'none'}"]
    lines += [f"Task: {instruction}", f"Answer: {label}", "Input:"]
    return "\n".join(lines)


def task_text(instruction: str, inp: str) -> str:
    """The prompt an instance is trained and answered with: the instruction, then the input after a
    blank line (the Alpaca loader's rendering, ``harness.data.load``)."""
    return instruction + ("\n\n" + inp if inp.strip() else "")


def _demos(seeds: list[dict[str, Any]], k: int, rng: random.Random, classification: bool | None = None,
           balanced: bool = False) -> list[dict[str, Any]]:
    pool = [s for s in seeds if classification is None or s["is_classification"] == classification] or seeds
    if balanced:
        yes = [s for s in seeds if s["is_classification"]]
        no = [s for s in seeds if not s["is_classification"]]
        picks = rng.sample(yes, min(len(yes), k // 2)) + rng.sample(no, min(len(no), k - k // 2))
        rng.shuffle(picks)
        return picks
    return rng.sample(pool, min(k, len(pool)))


# --------------------------------------------------------------------------- stage functions (pure)


def kept_instructions(*filters: list[dict[str, Any]]) -> list[str]:
    return [r["instruction"] for rows in filters for r in rows if r["kept"]]


def make_instruction_prompts(seeds: list[dict[str, Any]], *previous: list[dict[str, Any]], n: int, seed_k: int,
                             gen_k: int, salt: str) -> list[dict[str, Any]]:
    """``n`` prompts of ``seed_k`` seed and ``gen_k`` earlier generated instructions (seeds fill in)."""
    rng = random.Random(f"self-instruct/prompts/{salt}")
    seed_texts = [s["instruction"] for s in seeds]
    generated = kept_instructions(*previous)
    rows = []
    for i in range(n):
        g = rng.sample(generated, min(gen_k, len(generated)))
        s = rng.sample(seed_texts, min(seed_k + gen_k - len(g), len(seed_texts)))
        examples = s + g
        rng.shuffle(examples)
        rows.append({"prompt": instruction_prompt(examples), "prompt_index": i, "n_generated_shown": len(g)})
    return rows


def filter_instructions(generated: list[dict[str, Any]], seeds: list[dict[str, Any]], *previous: list[dict[str, Any]],
                        round: int, min_words: int, max_words: int, threshold: float) -> tuple[list[dict[str, Any]], dict]:
    """Every candidate with its verdict: ``kept`` and ``reason`` (the first failing filter), its
    ROUGE-L with the nearest pool instruction and with the nearest seed."""
    seed_texts = [s["instruction"] for s in seeds]
    pool = RougePool(seed_texts + kept_instructions(*previous))
    seed_pool = RougePool(list(seed_texts))
    exact = {" ".join(t.lower().split()) for t in pool.texts}
    rows = []
    for g in generated:
        text = clean_generated_line(g["completion"])
        reason = instruction_problem(text, min_words=min_words, max_words=max_words)
        rouge, at = pool.nearest(text) if text else (0.0, None)
        if reason is None and " ".join(text.lower().split()) in exact:
            reason = "duplicate"
        if reason is None and rouge >= threshold:
            reason = "similar"
        s_rouge, s_at = seed_pool.nearest(text) if text else (0.0, None)
        kept = reason is None
        if kept:
            pool.add(text)
            exact.add(" ".join(text.lower().split()))
        rows.append({"instruction": text, "generated": g["completion"], "kept": kept, "reason": reason or "kept",
                     "rouge_pool": rouge, "nearest": pool.texts[at] if at is not None and rouge > 0 else None,
                     "rouge_seed": s_rouge, "nearest_seed": seed_texts[s_at] if s_at is not None and s_rouge > 0 else None,
                     "round": round})
    stats = {r: sum(x["reason"] == r for x in rows) for r in ("kept", *INSTRUCTION_REASONS)}
    return rows, {"candidates": len(rows), **stats}


def make_classify_prompts(filtered: list[dict[str, Any]], seeds: list[dict[str, Any]], *, demos: int,
                          salt: str) -> list[dict[str, Any]]:
    rng = random.Random(f"self-instruct/classify/{salt}")
    return [{"instruction": r["instruction"], "prompt": classify_prompt(r["instruction"], _demos(seeds, demos, rng,
                                                                                              balanced=True))}
            for r in filtered if r["kept"]]


def make_step1_prompts(filtered: list[dict[str, Any]], seeds: list[dict[str, Any]], *classified: list[dict[str, Any]],
                       demos: int, salt: str) -> list[dict[str, Any]]:
    """Per kept instruction: its classification decision, then the first instance prompt (labels for
    classification tasks, an input for the others)."""
    rng = random.Random(f"self-instruct/step1/{salt}")
    answers = {r["instruction"]: r["completion"] for rows in classified for r in rows}
    out = []
    for r in filtered:
        if not r["kept"]:
            continue
        ins = r["instruction"]
        said = parse_yes_no(answers[ins]) if ins in answers else None
        cls = said if said is not None else looks_like_classification(ins)
        by = "generator" if said is not None else "heuristic"
        prompt = (labels_prompt(ins, _demos(seeds, demos, rng, classification=True)) if cls
                  else input_prompt(ins, _demos(seeds, demos, rng, classification=False)))
        out.append({"instruction": ins, "is_classification": cls, "decided_by": by,
                    "step": "labels" if cls else "input", "prompt": prompt, "round": r["round"]})
    return out


def make_step2_prompts(step1: list[dict[str, Any]], seeds: list[dict[str, Any]], *, per_instruction: int,
                       demos: int, salt: str) -> list[dict[str, Any]]:
    """Input-first: one output prompt per sampled input (the task as it will be trained on).
    Output-first: one input prompt per label (labels read from all samples, at most
    ``per_instruction``); no readable label -> input-first with no input."""
    rng = random.Random(f"self-instruct/step2/{salt}")
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in step1:
        groups.setdefault(int(r["input_index"]), []).append(r)
    out = []
    for _, samples in sorted(groups.items()):
        first = samples[0]
        base = {k: first[k] for k in ("instruction", "is_classification", "decided_by", "round")}
        ins = first["instruction"]
        if first["step"] == "labels":
            labels: list[str] = []
            for s in samples:
                labels += [x for x in parse_labels(s["completion"]) if x.lower() not in (y.lower() for y in labels)]
            labels = labels[:per_instruction]
            if labels:
                for lab in labels:
                    out.append({**base, "step": "input_for_label", "label": lab, "input": None,
                                "prompt": input_for_label_prompt(ins, lab, _demos(seeds, demos, rng, True))})
                continue
            base["no_labels"] = True
            out.append({**base, "step": "output", "label": None, "input": "", "prompt": task_text(ins, "")})
            continue
        for s in samples:
            inp = normalise_input(s["completion"])
            out.append({**base, "step": "output", "label": None, "input": inp, "prompt": task_text(ins, inp)})
    return out


def assemble_instances(step2: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every generated instance with its verdict (``kept``, ``reason``), Self-Instruct's instance filters
    applied per instruction (harness.core.instructions)."""
    by_ins: dict[str, list[dict[str, Any]]] = {}
    for r in step2:
        if r["step"] == "input_for_label":
            inp, out = normalise_input(r["completion"]), r["label"]
        else:
            inp, out = r["input"], clean_generated_line(r["completion"])
        by_ins.setdefault(r["instruction"], []).append({
            "instruction": r["instruction"], "input": inp, "output": out, "is_classification": r["is_classification"],
            "decided_by": r["decided_by"], "round": r["round"], "no_labels": bool(r.get("no_labels")),
            "generated": r["completion"]})
    rows: list[dict[str, Any]] = []
    for cands in by_ins.values():
        for c in cands:
            c["reason"] = instance_problem(c["input"], c["output"]) or "kept"
        ok = [c for c in cands if c["reason"] == "kept"]
        for c, verdict in zip(ok, instance_verdicts([(c["input"], c["output"]) for c in ok])):
            c["reason"] = verdict
        for c in cands:
            c["kept"] = c["reason"] == "kept"
        rows += cands
    reasons = sorted({r["reason"] for r in rows})
    stats = {"instances": len(rows), **{f"instances_{x}": sum(r["reason"] == x for r in rows) for x in reasons},
             "instructions": len(by_ins), "instructions_with_instances": sum(
                 any(r["kept"] for r in rows if r["instruction"] == ins) for ins in by_ins)}
    return rows, stats


def collect_data(*stages: list[dict[str, Any]], n_filter: int, target: int,
                 prompt_format: str = "plain") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The training data and the statistics a reader of the paper expects.  ``stages`` are the rounds'
    filter stages (first ``n_filter``) and then their instance stages.  Instructions with at least
    one kept instance, in the order they were generated, up to ``target``; their kept instances as
    Alpaca records ``{instruction, input, output}`` (plus ``prompt``/``completion`` in the Alpaca
    prompt format when ``prompt_format="alpaca"``)."""
    filters, instances = stages[:n_filter], stages[n_filter:]
    candidates = [r for rows in filters for r in rows]
    inst = [r for rows in instances for r in rows]
    by_ins: dict[str, list[dict[str, Any]]] = {}
    for r in inst:
        by_ins.setdefault(r["instruction"], []).append(r)
    order = [r for r in candidates if r["kept"]]
    data_ins: list[dict[str, Any]] = []
    no_instance = beyond = 0
    for r in order:
        if not any(x["kept"] for x in by_ins.get(r["instruction"], [])):
            no_instance += 1
        elif len(data_ins) < target:
            data_ins.append(r)
        else:
            beyond += 1
    rows = []
    per_ins = []
    for r in data_ins:
        kept = [x for x in by_ins[r["instruction"]] if x["kept"]]
        per_ins.append(len(kept))
        for x in kept:
            row = {"instruction": x["instruction"], "input": x["input"], "output": x["output"],
                   "is_classification": x["is_classification"], "round": x["round"]}
            if prompt_format == "alpaca":
                row.update(prompt=alpaca_prompt(x["instruction"], x["input"]), completion=x["output"])
            rows.append(row)
    reasons = {k: sum(c["reason"] == k for c in candidates) for k in INSTRUCTION_REASONS}
    first = {r["instruction"]: by_ins.get(r["instruction"], [{}])[0] for r in data_ins}
    rouge_seed = [r["rouge_seed"] for r in data_ins]
    inst_reasons: dict[str, int] = {}
    for x in inst:
        inst_reasons[x["reason"]] = inst_reasons.get(x["reason"], 0) + 1
    stats = {
        "candidates": len(candidates),
        "passed_instruction_filters": len(order),
        "filtered": reasons,
        "no_valid_instance": no_instance,
        "beyond_target": beyond,
        "kept_instructions": len(data_ins),
        "kept_instances": len(rows),
        "instances_by_reason": inst_reasons,
        "classification": {
            "classification": sum(bool(first[r["instruction"]].get("is_classification")) for r in data_ins),
            "other": sum(not first[r["instruction"]].get("is_classification") for r in data_ins),
            "decided_by_generator": sum(first[r["instruction"]].get("decided_by") == "generator" for r in data_ins),
            "decided_by_heuristic": sum(first[r["instruction"]].get("decided_by") == "heuristic" for r in data_ins),
            "labels_unreadable": sum(bool(first[r["instruction"]].get("no_labels")) for r in data_ins)},
        "rouge_l_nearest_seed": {
            "histogram": histogram(rouge_seed, ROUGE_BINS),
            "mean": statistics.fmean(rouge_seed) if rouge_seed else None,
            "median": statistics.median(rouge_seed) if rouge_seed else None},
        "instances_per_instruction": {
            "histogram": {str(k): per_ins.count(k) for k in sorted(set(per_ins))},
            "mean": statistics.fmean(per_ins) if per_ins else None},
        "per_round": [{"round": i + 1, "candidates": len(f), "kept": sum(r["kept"] for r in f)}
                      for i, f in enumerate(filters)],
    }
    return rows, stats


def seed_records(seeds: list[dict[str, Any]], prompt_format: str = "plain") -> list[dict[str, Any]]:
    """The control's data: the seed tasks themselves, as the generated data is formatted."""
    rows = []
    for s in seeds:
        row = {"instruction": s["instruction"], "input": s["input"], "output": s["output"]}
        if prompt_format == "alpaca":
            row.update(prompt=alpaca_prompt(s["instruction"], s["input"]), completion=s["output"])
        rows.append(row)
    return rows


def alpaca_prompt(instruction: str, inp: str) -> str:
    """Stanford Alpaca's prompt format (Taori et al. 2023): a preamble, then ``### Instruction:``,
    ``### Input:`` (only when there is one) and ``### Response:`` headers."""
    if inp.strip():
        return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{instruction}\n\n### Response:")


# --------------------------------------------------------------------------- the pipeline


def bootstrap(ctx: Any, hp: Any, generator: Any, seeds: Any, *, classify: bool, per_instruction: int,
              prompt_format: str = "plain") -> tuple[Any, dict[str, Any]]:
    """Rounds of instruction generation, filtering and instance generation (Self-Instruct; Alpaca
    runs it with ``classify=False`` and one instance per instruction).  Returns the data stage's
    rows and its statistics."""
    filters: list[Any] = []
    instances: list[Any] = []
    kept_total = 0
    for k in range(1, hp.rounds + 1):
        prompts = ctx.transform(f"r{k}-prompts", make_instruction_prompts, seeds, *filters, n=hp.prompts_per_round,
                                seed_k=hp.seed_in_context, gen_k=hp.generated_in_context, salt=f"{ctx.spec.seed}/{k}")
        gen = ctx.generate(f"r{k}-instructions", model=generator, prompts=prompts, n=hp.samples_per_prompt,
                           temperature=hp.temperature, top_p=hp.top_p, max_new_tokens=hp.max_new_tokens,
                           seed=ctx.spec.seed * 1000 + k)
        filt = ctx.transform(f"r{k}-filter", filter_instructions, gen, seeds, *filters, round=k,
                             min_words=hp.min_instruction_words, max_words=hp.max_instruction_words,
                             threshold=hp.rouge_threshold)
        filters.append(filt)
        if not any(r["kept"] for r in filt.load()):
            continue  # nothing new this round: the next round prompts again
        classified = []
        if classify and hp.ask_classification:
            cprompts = ctx.transform(f"r{k}-classify-prompts", make_classify_prompts, filt, seeds, demos=hp.demos,
                                     salt=f"{ctx.spec.seed}/{k}")
            classified = [ctx.generate(f"r{k}-classify", model=generator, prompts=cprompts, temperature=0.0,
                                       max_new_tokens=4, seed=ctx.spec.seed * 1000 + k)]
        if classify:
            s1 = ctx.transform(f"r{k}-step1-prompts", make_step1_prompts, filt, seeds, *classified, demos=hp.demos,
                               salt=f"{ctx.spec.seed}/{k}")
        else:
            s1 = ctx.transform(f"r{k}-step1-prompts", make_input_prompts, filt, seeds, demos=hp.demos,
                               salt=f"{ctx.spec.seed}/{k}")
        step1 = ctx.generate(f"r{k}-step1", model=generator, prompts=s1, n=per_instruction,
                             temperature=hp.instance_temperature, max_new_tokens=hp.max_new_tokens,
                             seed=ctx.spec.seed * 1000 + k)
        s2 = ctx.transform(f"r{k}-step2-prompts", make_step2_prompts, step1, seeds, per_instruction=per_instruction,
                           demos=hp.demos, salt=f"{ctx.spec.seed}/{k}")
        step2 = ctx.generate(f"r{k}-step2", model=generator, prompts=s2, temperature=hp.instance_temperature,
                             max_new_tokens=hp.max_new_tokens, seed=ctx.spec.seed * 1000 + k)
        inst = ctx.transform(f"r{k}-instances", assemble_instances, step2)
        instances.append(inst)
        kept_total += len({r["instruction"] for r in inst.load() if r["kept"]})
        if kept_total >= hp.target:
            break
    rounds_run = len(filters)
    if kept_total == 0:
        stats = [json.loads((f.path.parent / "summary.json").read_text()).get("stats", {}) for f in filters]
        raise ValueError(f"{ctx.spec.method_name}: no instruction survived the filters in {rounds_run} rounds "
                         f"(per round: {stats}); try more rounds or prompts, another generator, or looser "
                         "min_instruction_words / rouge_threshold")
    data = ctx.transform("data", collect_data, *filters, *instances, n_filter=len(filters), target=hp.target,
                         prompt_format=prompt_format)
    stats = json.loads((data.path.parent / "summary.json").read_text())["stats"]
    stats["rounds_run"] = rounds_run
    return data, stats


def make_input_prompts(filtered: list[dict[str, Any]], seeds: list[dict[str, Any]], *, demos: int,
                       salt: str) -> list[dict[str, Any]]:
    """Without classification (Alpaca): an input prompt for every kept instruction."""
    rng = random.Random(f"self-instruct/step1/{salt}")
    return [{"instruction": r["instruction"], "is_classification": False, "decided_by": "none", "step": "input",
             "prompt": input_prompt(r["instruction"], _demos(seeds, demos, rng)), "round": r["round"]}
            for r in filtered if r["kept"]]


def seeds_rows(ctx: Any, seed_tasks: str | None) -> Any:
    path = Path(seed_tasks or ctx.world_resource("seed_tasks")).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"method.seed_tasks: {str(path)!r} is not a file")
    return ctx.transform("seeds", load_seeds, path=str(path), digest=file_digest(str(path)))


def seed_summary(seeds: Any) -> str:
    st = json.loads((seeds.path.parent / "summary.json").read_text())["stats"]
    return f"{st['n_seeds']} tasks ({st['n_classification']} classification) from {st['file']}"


def held_out(ev: dict[str, Any]) -> dict[str, Any]:
    return {"overall": ev.get("gold_reward_mean"), **(ev.get("gold_reward_by_group") or {})}


def report_markdown(title: str, stats: dict[str, Any], header: list[str], scores: dict[str, dict[str, Any]]) -> str:
    """The pipeline's account: data statistics, then held-out scores per group (base, control, model)."""
    def num(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) and v == v else "-"

    lines = [f"# {title}", "", *header, "", "## Instructions", "", "| | count |", "|---|---:|",
             f"| generated candidates | {stats['candidates']} |",
             *[f"| filtered: {k} | {v} |" for k, v in stats["filtered"].items()],
             f"| passed the instruction filters | {stats['passed_instruction_filters']} |",
             f"| dropped: no valid instance | {stats['no_valid_instance']} |",
             f"| beyond the target | {stats['beyond_target']} |",
             f"| **kept (in the data)** | **{stats['kept_instructions']}** |", "",
             "Per round: " + ", ".join(f"r{r['round']} {r['kept']}/{r['candidates']}" for r in stats["per_round"]),
             "", "Classification: " + ", ".join(f"{k} {v}" for k, v in stats["classification"].items()), "",
             "## ROUGE-L of each kept instruction with its most similar seed", "", "| ROUGE-L | instructions |",
             "|---|---:|",
             *[f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['n']} |" for b in stats["rouge_l_nearest_seed"]["histogram"]],
             "", f"mean {num(stats['rouge_l_nearest_seed']['mean'])}, median "
                 f"{num(stats['rouge_l_nearest_seed']['median'])}", "",
             "## Instances", "", f"{stats['kept_instances']} kept; per instruction: " + ", ".join(
                 f"{k}: {v}" for k, v in stats["instances_per_instruction"]["histogram"].items())
             + f" (mean {num(stats['instances_per_instruction']['mean'])}); by verdict: "
             + ", ".join(f"{k} {v}" for k, v in sorted(stats["instances_by_reason"].items())), "",
             "## Held-out gold score by prompt group", ""]
    cols = list(scores)
    groups = list(dict.fromkeys(g for s in scores.values() for g in s))
    lines += ["| group | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for g in sorted(groups, key=lambda g: (g != "overall", "/" in g, g)):
        lines.append(f"| {g} | " + " | ".join(num(scores[c].get(g)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


@register_method
class SelfInstruct:
    name = "self-instruct"
    paper = Paper("Self-Instruct: Aligning Language Models with Self-Generated Instructions", "2212.10560",
                  "Wang et al.")
    #: what the train stage consumes: instruction (+ input) -> output
    data_kind = DataKind.SFT
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = SelfInstructConfig
    stages = ("generate instructions", "filter", "classify", "instances", "train")

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_lr(trial, 1e-5, 3e-3)

    def objective(self, hp: Any, policy: Any, reference: Any, norm: Any) -> Any:
        """The train stage's objective: SFT's completion-only NLL (the stage runs ``method=sft``)."""
        return SFT().objective(hp, policy, reference, norm)

    def pipeline(self, hp: SelfInstructConfig, ctx: Any) -> Any:
        generator = ctx.model_ref(hp.generator)
        seeds = seeds_rows(ctx, hp.seed_tasks)
        data, stats = bootstrap(ctx, hp, generator, seeds, classify=True, per_instruction=hp.instances_per_instruction)
        model = ctx.train("train", data=data, method={"name": "sft"}, model=ctx.start, round=1)
        scores = {"untuned base": held_out({"gold_reward_mean": model.eval.get("baseline_gold_reward_mean"),
                                            "gold_reward_by_group": model.eval.get("baseline_gold_reward_by_group")})}
        control = None
        if hp.control:
            cdata = ctx.transform("control-data", seed_records, seeds)
            control = ctx.train("control", data=cdata, method={"name": "sft"}, model=ctx.start)
            scores["SFT on seeds only"] = held_out(control.eval)
        scores["Self-Instruct SFT"] = held_out(model.eval)
        ctx.record_round(1, model, data=stats, control=held_out(control.eval) if control else None)
        gen_name = hp.generator or "the policy itself"
        header = [f"Generator: {gen_name}; seeds: {seed_summary(seeds)}; "
                  f"rounds run: {stats['rounds_run']} of at most {hp.rounds}; target: {hp.target} instructions.",
                  f"Fine-tuned: {ctx.start.path} with the run's train settings on the kept instances "
                  f"({model.run_dir}); control: the same on the seed tasks alone "
                  f"({control.run_dir if control else 'not run'})."]
        ctx.write_report("self_instruct", {"stats": stats, "scores": scores, "generator": gen_name},
                         report_markdown("Self-Instruct data and results", stats, header, scores))
        return model
