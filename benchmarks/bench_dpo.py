"""DPO speed and memory benchmark: this harness's training core against TRL's ``DPOTrainer``,
and a DPO beta sweep with and without the shared reference log-prob cache.

    nox -s bench                                # the full benchmark (about 8 min on 2 CPU cores)
    python benchmarks/bench_dpo.py              # the same in the current environment
    python benchmarks/bench_dpo.py --quick      # a much smaller smoke check

Part 1 trains DPO on the toy world's 4-layer, 256-hidden model (``toy:bench``) with
sequences of up to 256 tokens and 8 pairs per step, in fp32 and bf16, once with
``harness.training.runner.execute`` and once with TRL's ``DPOTrainer`` under matched settings:
the same weights (TRL gets an explicit reference copy), the same pairs and token ids
(checked), one epoch, AdamW, cosine schedule, no gradient checkpointing, no eval, no
saving during training.  Each configuration runs in its own subprocess so its peak
memory is its own; on CPU a second, shorter run per configuration measures live memory
(see ``MMAP_THRESHOLD``), since glibc's retained heap blurs the plain peak RSS.  Part 2 runs a 4-trial beta sweep twice: trials sharing the on-disk
reference cache (cold for the first trial) and trials with ``train.ref_cache=false``.

Numbers are printed as tables and written to ``benchmarks/results/bench_dpo-<time>.json``.
Nothing here asserts on time: it is a measurement, not a test (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(ROOT))

MAX_LENGTH = 256
MAX_PROMPT_LENGTH = 64
BATCH_PAIRS = 8
BETAS = (0.05, 0.1, 0.2, 0.5)
#: the issue's target: our tokens/s at least this multiple of TRL's, at no more peak memory
TARGET_SPEEDUP = 1.3
#: glibc's default raises its mmap threshold after large frees and then keeps freed
#: tensors in the heap, so RSS shows allocator history more than live memory; a fixed
#: threshold returns every freed tensor (>= 128 KiB) to the OS (used by the live-memory runs)
MMAP_THRESHOLD = 128 * 1024

WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


# --------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of one phase of this process: CUDA allocator peak on a GPU, else the
    resident-set high-water mark (VmHWM), which Linux resets to the current RSS when
    ``5`` is written to ``/proc/self/clear_refs``."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.resettable = self.cuda or self._try_clear()

    @staticmethod
    def _try_clear() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_mb(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
        raise RuntimeError(f"/proc/self/status has no {field}")

    def current_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated() / 2**20
        return self._status_mb("VmRSS") if self.resettable else float("nan")

    def reset(self) -> float:
        """Start a new phase; returns the memory in use at its start (MB)."""
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            self._try_clear()
        return self.current_mb()

    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        if self.resettable:
            return self._status_mb("VmHWM")
        import resource

        # not resettable (not Linux): the whole process's peak, stated as such in the output
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- data


def make_pairs(n_pairs: int, seed: int, out: Path, max_length: int | None = None) -> dict[str, Any]:
    """A jsonl of ``n_pairs`` long preference pairs from the toy world.

    Each completion joins toy responses (chosen ones for ``chosen``, rejected ones for
    ``rejected``) until prompt + completion + EOS reaches a per-sequence target length
    drawn from [224, 256] tokens, so batches have realistic ragged padding and no
    sequence is truncated by either trainer (TRL 1.16 truncates prompt+completion at
    ``max_length``; ours truncates the completion to fit, which would then agree anyway).
    """
    from transformers import AutoTokenizer

    from harness.data.batching import render_prompt
    from harness.worlds.base import get_world

    max_length = max_length or MAX_LENGTH
    world = get_world("toy")
    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir())
    src = [json.loads(line) for line in world.split_path("paired").read_text().splitlines() if line.strip()]
    rng = random.Random(seed)

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def grow(prompt_len: int, column: str) -> str:
        target = rng.randint(max_length - 32, max_length)
        parts: list[str] = []
        while True:
            candidate = " ".join([*parts, rng.choice(src)[column]])
            if prompt_len + n_tokens(candidate) + 1 > target:  # + EOS
                break
            parts.append(candidate[len(" ".join(parts)):].strip())
        if not parts:
            raise RuntimeError(f"no toy response fits in {target - prompt_len} tokens")
        return " ".join(parts)

    rows = []
    for i in range(n_pairs):
        prompt = src[i % len(src)]["prompt"]
        p_len = len(tok(render_prompt(tok, [{"role": "user", "content": prompt}]), add_special_tokens=False)["input_ids"])
        if p_len > MAX_PROMPT_LENGTH:
            raise RuntimeError(f"toy prompt {prompt!r} has {p_len} tokens, over {MAX_PROMPT_LENGTH}")
        rows.append({"prompt": prompt, "chosen": grow(p_len, "chosen"), "rejected": grow(p_len, "rejected")})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"path": str(out), "pairs": n_pairs}


# --------------------------------------------------------------------------- workers (subprocesses)


def _common_imports() -> None:
    """Both trainers' workers import the same libraries, so the library share of the
    resident set is equal and the peak-RSS comparison is about training alone."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import trl  # noqa: F401
    import trl.trainer.dpo_trainer  # noqa: F401

    import harness.data.load  # noqa: F401
    import harness.modeling.peft_setup  # noqa: F401
    import harness.training.runner  # noqa: F401

    datasets.disable_progress_bars()


class Clock:
    """Wall and CPU time of this process since the worker's start mark (after the imports).
    CPU time is what the process itself computed: on a shared machine it moves much less with
    other processes' load than wall time does (both trainers run one process)."""

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def now(self) -> tuple[float, float]:
        return time.perf_counter() - self.t0, time.process_time() - self.c0


def _core_overrides(job: dict[str, Any], beta: float, ref_cache: bool, name: str) -> list[str]:
    return [
        f"model={job['model_dir']}", f"data={job['data']}", "method=dpo", f"method.beta={beta}",
        f"train.max_length={MAX_LENGTH}", f"train.max_prompt_length={MAX_PROMPT_LENGTH}",
        f"train.batch_size={BATCH_PAIRS}", "train.grad_accum=1", f"train.precision={job['precision']}",
        f"train.lr={job['lr']}", "train.schedule=cosine", "train.warmup_ratio=0.0", "train.weight_decay=0.0",
        "train.max_grad_norm=1.0", "train.epochs=1", "train.gradient_checkpointing=false", "train.log_every=1",
        "train.progress=false", f"train.ref_cache={str(ref_cache).lower()}", "data.eval_fraction=0.0",
        "eval.enabled=false", "tracking.mode=disabled", "seed=0", f"output_dir={job['runs_dir']}", f"name={name}",
    ]


def _instrument_core(mem: PeakMemory, marks: dict[str, Any], steps: list[tuple[int, float, float]],
                     clock: Clock | None = None) -> tuple[Any, Any]:
    """Timing and memory marks around ``execute``: the reference pass starts right after
    the model is loaded, the training loop at the first optimizer step.  Returns the
    hooks and a function that removes the timer from ``runner.compute_references``."""
    from harness.training import runner
    from harness.training.loop import TrainHooks

    original = runner.compute_references

    def timed_references(*args: Any, **kwargs: Any) -> Any:
        marks["load_peak_mb"] = mem.peak_mb()  # model loading, before the reset below
        marks["rss_after_load_mb"] = mem.reset()
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        marks["ref_precompute_s"] = time.perf_counter() - t0
        marks["ref_precompute_peak_mb"] = mem.peak_mb()
        return out

    runner.compute_references = timed_references

    def first_step() -> None:
        marks["setup_peak_mb"] = max(mem.peak_mb(), marks.get("ref_precompute_peak_mb", 0.0), marks.get("load_peak_mb", 0.0))
        marks["rss_before_loop_mb"] = mem.reset()
        marks["t_loop_start"] = time.perf_counter()
        if clock is not None:
            marks["setup_wall_s"], marks["setup_cpu_s"] = clock.now()
            marks["c_loop_start"] = time.process_time()

    def on_log(row: dict[str, Any]) -> None:
        if "loss" in row:
            steps.append((int(row["step"]), time.perf_counter(), float(row["loss"])))
            marks["loop_peak_mb"] = mem.peak_mb()
            if clock is not None:
                marks["e2e_wall_s"], marks["e2e_cpu_s"] = clock.now()

    def restore() -> None:
        runner.compute_references = original

    return TrainHooks(on_first_step=first_step, on_log=on_log), restore


def _loop_stats(marks: dict[str, Any], steps: list[tuple[int, float, float]], tokens: int) -> dict[str, Any]:
    t0 = marks["t_loop_start"]
    times = [t0] + [t for _, t, _ in steps]
    durations = [b - a for a, b in zip(times, times[1:])]
    loop_s = steps[-1][1] - t0
    return {
        "steps": len(steps), "tokens": tokens, "loop_s": loop_s, "tokens_per_s": tokens / loop_s,
        "median_step_s": statistics.median(durations), "first_loss": steps[0][2], "last_loss": steps[-1][2],
    }


def worker_core(job: dict[str, Any]) -> dict[str, Any]:
    _common_imports()
    import torch

    from harness.core.config import load_spec
    from harness.training import runner

    mem = PeakMemory()
    marks: dict[str, Any] = {"rss_start_mb": mem.reset()}
    clock = Clock()
    steps: list[tuple[int, float, float]] = []
    hooks, restore = _instrument_core(mem, marks, steps, clock)
    if job.get("forward"):  # scripts/gpu_check.py: the log-prob path / packing to measure
        from harness.modeling.forward import ForwardOptions, set_defaults

        set_defaults(ForwardOptions(**job["forward"]))
    spec = load_spec(None, _core_overrides(job, job["beta"], True, job["label"]) + list(job.get("overrides", [])))
    t0 = time.perf_counter()
    run = runner.execute(spec, hooks=hooks, tracking="disabled")
    wall = time.perf_counter() - t0
    restore()
    summary = json.loads((run.path / "summary.json").read_text())
    stats = _loop_stats(marks, steps, int(summary["tokens"]))
    return {
        **stats, "trainer": "ours", "precision": job["precision"], "peak_mb": marks["loop_peak_mb"],
        "rss_before_loop_mb": marks["rss_before_loop_mb"], "rss_after_load_mb": marks["rss_after_load_mb"],
        "ref_precompute_s": marks["ref_precompute_s"], "ref_precompute_peak_mb": marks["ref_precompute_peak_mb"],
        "reference_cache": summary["reference_cache"], "core_tokens_per_s": summary["tokens_per_s"],
        "execute_wall_s": wall, "threads": torch.get_num_threads(), "memory_resettable": mem.resettable,
        "cuda": mem.cuda, "total_params": summary["total_params"], "setup_peak_mb": marks["setup_peak_mb"],
        "rss_start_mb": marks["rss_start_mb"],
        **{k: marks[k] for k in ("setup_wall_s", "setup_cpu_s", "e2e_wall_s", "e2e_cpu_s")},
        "loop_cpu_s": marks["e2e_cpu_s"] - marks["setup_cpu_s"],
    }


def worker_trl(job: dict[str, Any]) -> dict[str, Any]:
    _common_imports()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    mem = PeakMemory()
    marks: dict[str, Any] = {"rss_start_mb": mem.reset()}
    clock = Clock()
    precompute = bool(job.get("precompute"))
    steps: list[tuple[int, float, float]] = []
    rows = [json.loads(line) for line in Path(job["data"]).read_text().splitlines() if line.strip()]
    # conversational rows: TRL then renders prompts with the chat template exactly as the harness does
    ds = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    policy = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32).to(device)
    # with precompute, TRL's best matching configuration passes no reference model: the policy
    # itself, before training, computes the reference log-probs, and no second copy is held
    reference = None if precompute else AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32).to(device)
    marks["rss_after_load_mb"] = mem.current_mb()

    class Marks(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["setup_peak_mb"] = mem.peak_mb()
            marks["rss_before_loop_mb"] = mem.reset()
            marks["t_loop_start"] = time.perf_counter()
            marks["setup_wall_s"], marks["setup_cpu_s"] = clock.now()
            marks["c_loop_start"] = time.process_time()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs and "train_runtime" not in logs:
                steps.append((int(state.global_step), time.perf_counter(), float(logs["loss"])))
                marks["loop_peak_mb"] = mem.peak_mb()
                marks["e2e_wall_s"], marks["e2e_cpu_s"] = clock.now()

    cfg = DPOConfig(
        output_dir=str(Path(job["runs_dir"]) / job["label"]),
        per_device_train_batch_size=BATCH_PAIRS, gradient_accumulation_steps=1, num_train_epochs=1,
        learning_rate=job["lr"], lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", gradient_checkpointing=False, bf16=job["precision"] == "bf16", fp16=False,
        use_cpu=device == "cpu", report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1,
        max_length=MAX_LENGTH, beta=job["beta"], loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
        seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=cfg, train_dataset=ds, processing_class=tok,
                         callbacks=[Marks()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    # after timing: TRL's token ids against the harness's own tokenisation of the same file
    tokens, mismatched = _compare_tokens(job, tok, trainer.train_dataset)
    stats = _loop_stats(marks, steps, tokens)
    return {
        **stats, "trainer": "trl-pre" if precompute else "trl", "precision": job["precision"],
        "peak_mb": marks["loop_peak_mb"],
        "rss_before_loop_mb": marks["rss_before_loop_mb"], "rss_after_load_mb": marks["rss_after_load_mb"],
        "setup_peak_mb": marks["setup_peak_mb"], "train_call_wall_s": wall, "mismatched_sequences": mismatched,
        "threads": torch.get_num_threads(), "memory_resettable": mem.resettable, "cuda": mem.cuda,
        "rss_start_mb": marks["rss_start_mb"],
        **{k: marks[k] for k in ("setup_wall_s", "setup_cpu_s", "e2e_wall_s", "e2e_cpu_s")},
        "loop_cpu_s": marks["e2e_cpu_s"] - marks["setup_cpu_s"],
    }


def _compare_tokens(job: dict[str, Any], tok: Any, trl_dataset: Any) -> tuple[int, int]:
    """(non-pad tokens TRL trained on in one epoch, sequences whose ids differ from ours)."""
    from harness.core.contract import DataKind
    from harness.data.batching import tokenize_records
    from harness.data.load import load_records

    ours = tokenize_records(load_records(job["data"], "train", DataKind.PAIRED).records, tok, DataKind.PAIRED,
                            MAX_LENGTH, MAX_PROMPT_LENGTH)
    tokens = mismatched = 0
    for mine, theirs in zip(ours, trl_dataset, strict=True):
        for seg in ("chosen", "rejected"):
            ids = (theirs["prompt_ids"] + theirs[f"{seg}_ids"])[:MAX_LENGTH]
            tokens += len(ids)
            s = mine["segments"][seg]
            mismatched += int(ids != s["input_ids"] or len(theirs["prompt_ids"]) != s["prompt_len"])
    return tokens, mismatched


def worker_sweep(job: dict[str, Any]) -> dict[str, Any]:
    _common_imports()
    from harness.core.config import load_spec
    from harness.training import runner

    mem = PeakMemory()
    trials = []
    t_all = time.perf_counter()
    for beta in job["betas"]:
        marks: dict[str, Any] = {}
        steps: list[tuple[int, float, float]] = []
        hooks, restore = _instrument_core(mem, marks, steps)
        spec = load_spec(None, _core_overrides(job, beta, job["ref_cache"], f"{job['label']}-b{beta}"))
        t0 = time.perf_counter()
        run = runner.execute(spec, hooks=hooks, tracking="disabled")
        wall = time.perf_counter() - t0
        restore()
        summary = json.loads((run.path / "summary.json").read_text())
        trials.append({
            "beta": beta, "wall_s": wall, "ref_s": marks["ref_precompute_s"], "reference_cache": summary["reference_cache"],
            "loop_s": steps[-1][1] - marks["t_loop_start"], "final_loss": summary["final_loss"], "steps": summary["steps"],
        })
    return {"ref_cache": job["ref_cache"], "trials": trials, "total_s": time.perf_counter() - t_all}


WORKERS = {"core": worker_core, "trl": worker_trl, "trl-pre": lambda job: worker_trl({**job, "precompute": True}),
           "sweep": worker_sweep}


def worker_main(job_path: Path) -> None:
    global MAX_LENGTH, BATCH_PAIRS
    job = json.loads(job_path.read_text())
    # other benchmarks (bench_dpo_vocab.py) reuse these workers at another shape
    MAX_LENGTH = int(job.get("max_length", MAX_LENGTH))
    BATCH_PAIRS = int(job.get("batch_pairs", BATCH_PAIRS))
    load0 = os.getloadavg()
    result = WORKERS[job["kind"]](job)
    result["loadavg"] = [load0[0], os.getloadavg()[0]]
    Path(job["result"]).write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------- orchestration


def spawn(job: dict[str, Any], work: Path, label: str, env_extra: dict[str, str]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its log stays in the work directory."""
    job_path = work / f"{label}.job.json"
    job["label"] = label  # also the run name: unique within the work directory
    job["result"] = str(work / f"{label}.result.json")
    job_path.write_text(json.dumps(job))
    log = work / f"{label}.log"
    env = {**os.environ, **WORKER_ENV, **env_extra}
    print(f"  running {label} ...", end="", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)],
                              stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    print(f" {time.perf_counter() - t0:.0f} s", flush=True)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"benchmark worker {label!r} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return dict(json.loads(Path(job["result"]).read_text()))


def write_results(results: Path, name: str, record: dict[str, Any], quick: bool = False) -> Path:
    """The numbers with their settings, as ``<results>/<name>-<time>[-quick].json`` (git-ignored)."""
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if quick else ''}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"numbers written to {out}")
    return out


def _fmt(x: float, spec: str = ".1f") -> str:
    return "n/a" if x != x else format(x, spec)  # NaN when memory cannot be measured


def _pick(rows: list[dict[str, Any]], prec: str, trainer: str) -> dict[str, Any]:
    trainer = "ours" if trainer == "core" else trainer
    return next(r for r in rows if r["precision"] == prec and r["trainer"] == trainer)


def _whole_peak(r: dict[str, Any]) -> float:
    """Peak from model load to the end of the loop: the reference pass (ours) or the
    trainer's set-up (TRL) can be the peak phase."""
    return max(r["peak_mb"], r.get("ref_precompute_peak_mb", 0.0), r.get("setup_peak_mb", 0.0))


TRAINERS = ("core", "trl-pre", "trl")
LABELS = {"ours": "ours", "core": "ours", "trl": "TRL", "trl-pre": "TRL+pre"}
PEERS = (("trl-pre", "TRL DPOTrainer, precompute_ref_log_probs=True (its best matching configuration)"),
         ("trl", "TRL DPOTrainer as it ships (reference model run every step)"))


def _trainer_key(r: dict[str, Any]) -> str:
    return "core" if r["trainer"] == "ours" else r["trainer"]


def print_part1(rows: list[dict[str, Any]], live: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    cuda = rows[0]["cuda"]
    print()
    print(f"Part 1 - DPO on {meta['model']} ({meta['params'] / 1e6:.2f}M params), {meta['pairs']} pairs x 1 epoch = "
          f"{meta['steps']} steps of {BATCH_PAIRS} pairs, sequences <= {MAX_LENGTH} tokens "
          f"(mean {meta['mean_seq']:.0f}), torch threads {rows[0]['threads']}"
          + (f", best of {meta['repeats']} runs" if meta["repeats"] > 1 else ""))
    print("end to end = from the worker's start (libraries imported) to the last optimizer step: data, tokenising, "
          "model loading, the reference pass (ours, TRL+pre), the training loop")
    unit = "GPU MB" if cuda else "RSS MB"
    head = (f"{'precision':<9} {'trainer':<8} {'tokens':>7} {'set-up s':>8} {'loop s':>7} {'e2e s':>7} {'e2e cpu s':>9} "
            f"{'e2e tok/s':>9} {'loop tok/s':>10} {'median step':>11} {'peak ' + unit:>11} {'loss@1':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['precision']:<9} {LABELS[r['trainer']]:<8} {r['tokens']:>7} {r['setup_wall_s']:>8.2f} {r['loop_s']:>7.2f} "
              f"{r['e2e_wall_s']:>7.2f} {r['e2e_cpu_s']:>9.2f} {r['tokens'] / r['e2e_wall_s']:>9.0f} "
              f"{r['tokens_per_s']:>10.0f} {r['median_step_s']:>11.3f} {_fmt(_whole_peak(r)):>11} {r['first_loss']:>7.4f}")
    if live:
        print()
        print(f"Live memory: the same runs on {meta['live_pairs']} pairs with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} "
              f"so freed tensors go back to the OS and RSS follows what is allocated (slower: not timed)")
        head_m = f"{'precision':<9} {'trainer':<8} {'peak RSS MB, whole run':>22} {'loop peak MB':>12} {'loop growth MB':>14}"
        print(head_m)
        print("-" * len(head_m))
        for r in live:
            print(f"{r['precision']:<9} {LABELS[r['trainer']]:<8} {_fmt(_whole_peak(r)):>22} {_fmt(r['peak_mb']):>12} "
                  f"{_fmt(r['peak_mb'] - r['rss_before_loop_mb']):>14}")
    print()
    print(f"Ratios, ours / peer (speed: higher is better; memory: lower is better). Target: end to end >= "
          f"{TARGET_SPEEDUP}x TRL+pre at <= 1.0x its memory")
    head2 = (f"{'precision':<9} {'peer':<8} {'END TO END':>10} {'e2e cpu':>8} {'loop tok/s':>10} {'loop cpu':>8} "
             f"{'median step':>11} "
             f"{'memory':>7} {'mem (RSS)':>9}  verdict")
    print(head2)
    print("-" * len(head2))
    verdicts = []
    for prec in meta["precisions"]:
        ours = _pick(rows, prec, "ours")
        for peer, _ in PEERS:
            if not any(r["precision"] == prec and r["trainer"] == peer for r in rows):
                continue
            other = _pick(rows, prec, peer)
            e2e = (ours["tokens"] / ours["e2e_wall_s"]) / (other["tokens"] / other["e2e_wall_s"])
            e2e_cpu = (ours["tokens"] / ours["e2e_cpu_s"]) / (other["tokens"] / other["e2e_cpu_s"])
            speed = ours["tokens_per_s"] / other["tokens_per_s"]
            loop_cpu = other["loop_cpu_s"] / ours["loop_cpu_s"]
            step = other["median_step_s"] / ours["median_step_s"]
            rss = _whole_peak(ours) / _whole_peak(other)
            # on a GPU the allocator's own peak is exact; on CPU the live-memory pass decides
            mem = rss if cuda or not live else _whole_peak(_pick(live, prec, "ours")) / _whole_peak(_pick(live, prec, peer))
            ok = e2e >= TARGET_SPEEDUP and mem <= 1.0
            verdicts.append({"precision": prec, "peer": peer, "end_to_end_ratio": e2e, "end_to_end_cpu_ratio": e2e_cpu,
                             "steady_state_ratio": speed, "steady_state_cpu_ratio": loop_cpu,
                             "median_step_ratio": step, "memory_ratio": mem,
                             "rss_ratio_default_malloc": rss, "pass": ok})
            verdict = ("PASS" if ok else "MISS") if peer == "trl-pre" else ""
            print(f"{prec:<9} {LABELS[peer]:<8} {e2e:>9.2f}x {e2e_cpu:>7.2f}x {speed:>9.2f}x {loop_cpu:>7.2f}x {step:>10.2f}x "
                  f"{mem:>6.2f}x {rss:>8.2f}x  {verdict}")
    same = all(r.get("mismatched_sequences", 0) == 0 for r in rows)
    equal_tokens = len({r["tokens"] for r in rows}) == 1
    print(f"Same token ids in both trainers: {'yes' if same else 'NO'}; same tokens processed in every run: "
          f"{'yes' if equal_tokens else 'NO'}")
    return verdicts


def print_part2(cached: dict[str, Any], plain: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    print()
    print(f"Part 2 - DPO beta sweep, {len(BETAS)} trials x {meta['sweep_pairs']} pairs "
          f"({meta['sweep_steps']} steps), {meta['sweep_precision']}; wall time of each trial's whole execute()")
    head = (f"{'beta':>5}  {'shared cache: wall s':>20} {'ref s':>6} {'cache':>5}   "
            f"{'ref_cache=false: wall s':>23} {'ref s':>6}")
    print(head)
    print("-" * len(head))
    for a, b in zip(cached["trials"], plain["trials"], strict=True):
        state = "hit" if a["reference_cache"].get("hits") else "miss"
        print(f"{a['beta']:>5}  {a['wall_s']:>20.2f} {a['ref_s']:>6.2f} {state:>5}   {b['wall_s']:>23.2f} {b['ref_s']:>6.2f}")
    tc = sum(t["wall_s"] for t in cached["trials"])
    tp = sum(t["wall_s"] for t in plain["trials"])
    print(f"{'total':>5}  {tc:>20.2f} {'':>6} {'':>5}   {tp:>23.2f}")
    ratio = tp / tc
    print(f"Sweep time ratio, independent runs / shared cache: {ratio:.2f}x ({(1 - tc / tp) * 100:.0f}% less time)")
    return {"cached_total_s": tc, "independent_total_s": tp, "ratio": ratio}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke version (16 pairs, 2 steps per run)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per timed part-1 run (multiple of 8; default 256)")
    ap.add_argument("--live-pairs", type=int, default=None, help="pairs per live-memory run (default 64; 0 skips them)")
    ap.add_argument("--sweep-pairs", type=int, default=None, help="pairs per sweep trial (default 96)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per part-1 configuration, interleaved; the "
                    "fastest is reported (use 2-3 on a busy machine)")
    ap.add_argument("--sweep-precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--precisions", default="bf16,fp32", help="comma-separated: bf16,fp32")
    ap.add_argument("--no-sweep", action="store_true", help="skip part 2 (the beta sweep)")
    ap.add_argument("--peers", default="trl-pre,trl", help="comma-separated TRL configurations of part 1: trl-pre "
                    "(precompute_ref_log_probs=True), trl (as it ships)")
    ap.add_argument("--model", default="toy:bench", help="toy model size to benchmark (toy:bench is the issue's)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1, help="DPO beta of part 1")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return

    pairs = args.pairs or (16 if args.quick else 128)
    live_pairs = args.live_pairs if args.live_pairs is not None else (16 if args.quick else 64)
    sweep_pairs = args.sweep_pairs or (16 if args.quick else 96)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or any(p not in ("trl-pre", "trl") for p in peers):
        ap.error(f"--peers: expected trl-pre and/or trl, got {args.peers!r}")
    trainers = ["core", *peers]
    for label, n in (("--pairs", pairs), ("--sweep-pairs", sweep_pairs), ("--live-pairs", live_pairs or BATCH_PAIRS)):
        if n < BATCH_PAIRS or n % BATCH_PAIRS:
            ap.error(f"{label} must be a positive multiple of {BATCH_PAIRS}, got {n}")
    if live_pairs > pairs:
        ap.error(f"--live-pairs ({live_pairs}) must not exceed --pairs ({pairs})")
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        ap.error(f"--precisions: expected fp32 and/or bf16, got {args.precisions!r}")
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)

    from harness.training.runner import ensure_model

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"DPO benchmark: ours vs TRL; {os.cpu_count()} CPUs, load average {load_start[0]:.1f} "
          f"(other processes share the CPU: numbers are noisier the higher it is)")
    t0 = time.perf_counter()
    model_dir = ensure_model(args.model)
    if model_dir is None:
        ap.error(f"--model must be a toy model (toy:<size>), got {args.model!r}")
    print(f"toy model {args.model}: {model_dir} (ready in {time.perf_counter() - t0:.0f} s; built once, then cached)")
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    try:
        data = make_pairs(pairs, seed=0, out=work / "pairs.jsonl")
        live_data = work / "pairs-live.jsonl"  # the first pairs of the timed runs' file
        live_data.write_text("".join(Path(data["path"]).read_text().splitlines(keepends=True)[:live_pairs]))
        sweep_data = make_pairs(sweep_pairs, seed=1, out=work / "sweep-pairs.jsonl")
        common = {"model_dir": str(model_dir), "lr": args.lr, "beta": args.beta, "runs_dir": str(work / "runs")}
        print(f"part 1: {pairs} pairs, {pairs // BATCH_PAIRS} steps per timed run"
              + (f", {live_pairs} pairs per live-memory run" if live_pairs else "")
              + f"; part 2: {len(BETAS)} trials x {sweep_pairs} pairs, {sweep_pairs // BATCH_PAIRS} steps each")
        timed: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for rep in range(args.repeats):
            for prec in precisions:
                for kind in trainers:
                    label = f"{kind}-{prec}" + (f"-r{rep + 1}" if args.repeats > 1 else "")
                    # a fresh cache root per run: the reference pass is cold and measured
                    env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-{label}")}
                    job = {**common, "kind": kind, "precision": prec, "data": data["path"]}
                    timed.setdefault((kind, prec), []).append(spawn(job, work, label, env))
        # the fastest end to end of each configuration's repeats (the least disturbed by other load)
        rows = [max(timed[(kind, prec)], key=lambda r: r["tokens"] / r["e2e_wall_s"]) for prec in precisions
                for kind in trainers]
        live: list[dict[str, Any]] = []
        if live_pairs and not rows[0]["cuda"]:
            for prec in precisions:
                for kind in trainers:
                    env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-live-{kind}-{prec}"),
                           "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
                    job = {**common, "kind": kind, "precision": prec, "data": str(live_data)}
                    live.append(spawn(job, work, f"live-{kind}-{prec}", env))
        sweeps: dict[bool, dict[str, Any]] = {}
        for cached in (() if args.no_sweep else (True, False)):
            env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-sweep-{cached}")}
            job = {**common, "kind": "sweep", "precision": args.sweep_precision, "data": sweep_data["path"],
                   "betas": list(BETAS), "ref_cache": cached}
            sweeps[cached] = spawn(job, work, f"sweep-{'cached' if cached else 'independent'}", env)

        ours0 = rows[0]
        meta = {
            "model": args.model, "params": ours0["total_params"], "pairs": pairs, "steps": pairs // BATCH_PAIRS,
            "mean_seq": ours0["tokens"] / (2 * pairs), "precisions": precisions, "sweep_pairs": sweep_pairs,
            "sweep_steps": sweep_pairs // BATCH_PAIRS, "sweep_precision": args.sweep_precision,
            "repeats": args.repeats, "live_pairs": live_pairs,
        }
        verdicts = print_part1(rows, live, meta)
        sweep = print_part2(sweeps[True], sweeps[False], meta) if sweeps else {}
        load_end = os.getloadavg()
        total = time.perf_counter() - t_start
        print()
        print(f"benchmark took {total:.0f} s; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end "
              f"on {os.cpu_count()} CPUs")
        report = _report(args, meta, rows, live, timed, verdicts, sweeps, sweep, load_start, load_end, total)
        write_results(args.results, "bench_dpo", report, args.quick)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _report(args: argparse.Namespace, meta: dict[str, Any], rows: list[dict[str, Any]], live: list[dict[str, Any]],
            timed: dict[tuple[str, str], list[dict[str, Any]]], verdicts: list[dict[str, Any]],
            sweeps: dict[bool, dict[str, Any]], sweep: dict[str, Any], load_start: tuple[float, ...],
            load_end: tuple[float, ...], total: float) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    return {
        "benchmark": "bench_dpo", "quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {**meta, "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH,
                     "batch_pairs": BATCH_PAIRS, "lr": args.lr, "beta": args.beta, "betas": list(BETAS),
                     "target_speedup": TARGET_SPEEDUP},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                    "loadavg_start": list(load_start), "loadavg_end": list(load_end),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "part1": {"runs": rows, "live_memory_runs": live, "ratios": verdicts,
                  "all_timed_runs": {f"{k}-{p}": v for (k, p), v in timed.items()}},
        "part2": {"cached": sweeps.get(True), "independent": sweeps.get(False), **sweep},
        "total_s": total,
    }


if __name__ == "__main__":
    main()
