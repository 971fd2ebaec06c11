"""The Stanford Alpaca recipe (Taori et al. 2023, "Alpaca: A Strong, Replicable Instruction-Following
Model", github.com/tatsu-lab/stanford_alpaca): Self-Instruct data written by a strong teacher,
then supervised fine-tuning of a smaller student on it, in Alpaca's prompt format.

    harness run method=alpaca data=toy-instruct method.teacher=toy-instruct:base method.student=toy-instruct:small
    harness run method=alpaca data=toy-instruct method.teacher=openai:gpt-4o-mini method.student=toy-instruct:tiny

What Alpaca does, and how it differs from Self-Instruct (``methods/self_instruct.py``, whose
stages and filters it reuses):

* the **teacher** (Alpaca: text-davinci-003, the default, since retired: name yours) writes the
  instructions and instances; the **student** (Alpaca: LLaMA 7B) is the model fine-tuned: a
  distillation, so the two must differ (``method.student`` defaults to ``model=``, which is
  also the pipeline's starting point and is built if it is a world base: set ``model=`` to the
  student rather than leave it to the world's default base);
* no classification / non-classification split: every instruction gets its instance
  input-first, **one instance per instruction** (Alpaca: 52K instructions, 52K instances from
  the 175 Self-Instruct seed tasks); ROUGE-L < 0.7 and the keyword / length filters still apply;
* the student is trained on records in **Alpaca's prompt format**: a preamble, then
  ``### Instruction:``, ``### Input:`` (when there is one), ``### Response:`` (the generated
  data keeps the instruction/input/output columns too: it is an Alpaca-format dataset, and
  ``data=<that file>`` loads it as such).  Alpaca fine-tuned 3 epochs at lr 2e-5; here the
  run's ``train.*`` settings apply.

Measured like any run on the data world's held-out prompts against the untuned student, and,
with ``control=true``, against the student fine-tuned on the seed tasks alone (same format,
same training).  Caveat: the world's eval prompts are plain instructions, not wrapped in the
Alpaca format the student was trained on (the paper evaluates in its own format);
``method.prompt_format=plain`` trains on plain ``instruction + input`` prompts instead.
The pipeline's run directory gets ``alpaca.md`` / ``.json`` (data statistics and scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.core.config import MAX_COUNT, MAX_TOKENS, ranged
from harness.core.contract import DataKind, Paper, register_method, suggest_lr
from methods.self_instruct import bootstrap, held_out, report_markdown, seed_records, seed_summary, seeds_rows
from methods.sft import SFT


@dataclass
class AlpacaConfig:
    #: the model that writes the data: a local model (<world>:<size>, a run dir, a model dir) or
    #: openai:<model> at reward.judge_base_url; default: Alpaca's own teacher (since retired by OpenAI: name yours)
    teacher: str = "openai:text-davinci-003"
    #: the model fine-tuned on the teacher's data; None: model=
    student: str | None = None
    #: seed tasks (jsonl of {instruction, input, output}); None: the data world's
    seed_tasks: str | None = None
    #: stop once this many instructions are kept (Alpaca: 52K)
    target: int = ranged(52002, ge=1, le=MAX_COUNT)
    #: at most this many rounds of generation
    rounds: int = ranged(8, ge=1, le=10_000)
    #: instruction-generation prompts per round
    prompts_per_round: int = ranged(64, ge=1, le=MAX_COUNT)
    #: instructions sampled per prompt
    samples_per_prompt: int = ranged(1, ge=1, le=1024)
    #: in-context seed / generated instructions per prompt (Self-Instruct's 6 + 2)
    seed_in_context: int = ranged(6, ge=0, le=64)
    generated_in_context: int = ranged(2, ge=0, le=64)
    #: ROUGE-L below which a new instruction is kept (0.7)
    rouge_threshold: float = ranged(0.7, gt=0, le=1)
    #: instruction length bounds in words (more than 3, at most 150)
    min_instruction_words: int = ranged(4, ge=1, le=MAX_COUNT)
    max_instruction_words: int = ranged(150, ge=1, le=MAX_COUNT)
    #: seed tasks shown as worked examples in the instance prompts
    demos: int = ranged(4, ge=0, le=256)
    #: sampling of instructions (temperature, nucleus mass) and of instances
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    instance_temperature: float = ranged(0.7, ge=0)
    #: longest generated instruction or instance field (tokens)
    max_new_tokens: int = ranged(48, ge=1, le=MAX_TOKENS)
    #: the training records' prompt: Alpaca's format, or the plain instruction (+ input)
    prompt_format: Literal["alpaca", "plain"] = "alpaca"
    #: also fine-tune the student on the seed tasks alone (the report's control)
    control: bool = True

    def validate(self) -> None:
        if self.min_instruction_words > self.max_instruction_words:
            raise ValueError(f"min_instruction_words ({self.min_instruction_words}) is above max_instruction_words "
                             f"({self.max_instruction_words})")
        if self.seed_in_context + self.generated_in_context < 1:
            raise ValueError("seed_in_context + generated_in_context is 0: a prompt needs at least one example task")
        if self.seed_tasks is not None and not Path(self.seed_tasks).expanduser().is_file():
            raise ValueError(f"seed_tasks {self.seed_tasks!r} is not a file (a jsonl of instruction/input/output rows)")
        if not self.teacher.strip():
            raise ValueError("teacher is empty: name the model that writes the data (a local model or "
                             "openai:<model>; Alpaca used text-davinci-003)")
        if self.student is not None and self.teacher == self.student:
            raise ValueError(f"teacher and student are both {self.teacher!r}: Alpaca distils a teacher into a "
                             "different student (for a model writing its own data use method=self-instruct)")


@register_method
class Alpaca:
    name = "alpaca"
    paper = Paper("Alpaca: A Strong, Replicable Instruction-Following Model (Self-Instruct data from a teacher)", "",
                  "Taori et al.", url="https://github.com/tatsu-lab/stanford_alpaca")
    data_kind = DataKind.SFT
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = AlpacaConfig
    stages = ("teacher writes instructions", "filter", "instances", "student SFT")

    def search_space(self, trial: Any) -> dict[str, Any]:
        return suggest_lr(trial, 1e-5, 3e-3)

    def objective(self, hp: Any, policy: Any, reference: Any, norm: Any) -> Any:
        """The train stage's objective: SFT's completion-only NLL (the stage runs ``method=sft``)."""
        return SFT().objective(hp, policy, reference, norm)

    def pipeline(self, hp: AlpacaConfig, ctx: Any) -> Any:
        student = ctx.model_ref(hp.student)
        teacher = ctx.model_ref(hp.teacher)
        if hasattr(teacher, "check"):
            teacher.check()  # an endpoint without its API key fails now, not after the first stages
        if getattr(teacher, "path", None) == student.path:
            raise ValueError(f"method.teacher {hp.teacher!r} is the student ({student.path}); Alpaca needs a teacher "
                             "other than the model it fine-tunes")
        seeds = seeds_rows(ctx, hp.seed_tasks)
        data, stats = bootstrap(ctx, hp, teacher, seeds, classify=False, per_instruction=1,
                                prompt_format=hp.prompt_format)
        # the untuned student is the baseline every score is compared with
        base = {"eval.baseline": student.path}
        model = ctx.train("train", data=data, method={"name": "sft"}, model=student, round=1, overrides=base)
        scores = {"untuned student": held_out({"gold_reward_mean": model.eval.get("baseline_gold_reward_mean"),
                                               "gold_reward_by_group": model.eval.get("baseline_gold_reward_by_group")})}
        control = None
        if hp.control:
            cdata = ctx.transform("control-data", seed_records, seeds, prompt_format=hp.prompt_format)
            control = ctx.train("control", data=cdata, method={"name": "sft"}, model=student, overrides=base)
            scores["student SFT on seeds only"] = held_out(control.eval)
        scores["Alpaca student"] = held_out(model.eval)
        ctx.record_round(1, model, data=stats, control=held_out(control.eval) if control else None)
        header = [f"Teacher: {hp.teacher}; student: {hp.student or ctx.start.path}; seeds: {seed_summary(seeds)}; "
                  f"prompt format: {hp.prompt_format}; "
                  f"rounds run: {stats['rounds_run']} of at most {hp.rounds}; target: {hp.target} instructions.",
                  f"Student fine-tuned with the run's train settings ({model.run_dir}); control: the same on the seed "
                  f"tasks alone ({control.run_dir if control else 'not run'})."]
        ctx.write_report("alpaca", {"stats": stats, "scores": scores, "teacher": hp.teacher,
                                    "student": hp.student or ctx.start.path, "prompt_format": hp.prompt_format},
                         report_markdown("Alpaca: teacher data and student results", stats, header, scores))
        return model
