"""GRPO step benchmark: this harness's online training (rollout + update) against TRL's ``GRPOTrainer``.

    nox -s bench -- grpo                              # with the other benchmarks
    python benchmarks/bench_grpo.py                   # fp32, 1 warm-up + 8 timed steps per trainer
    python benchmarks/bench_grpo.py --precisions fp32,bf16 --repeats 2
    python benchmarks/bench_grpo.py --code /tmp/before   # "ours" from another checkout (before/after)
    python benchmarks/bench_grpo.py --quick           # smoke check

One GRPO step is a whole online cycle: generate ``GROUP`` completions for each of the step's
prompts with the current policy, score them, compute the reference's per-token log-probs (beta >
0, so both trainers keep a reference), one policy update.  Both trainers run it on the toy world's
4-layer, 256-hidden Llama (``toy:bench``) with matched settings in the same run: the same weights
(loaded from the same directory), the same prompts in the same steps (the toy world's ``prompts``
split; the order ours draws them is computed here and given to TRL unshuffled, and each worker
records what it generated for, so the match is checked and printed), the same group size,
maximum completion length, sampling temperature (1, no top-p / top-k), reward (the toy world's
gold scorer, as TRL reward function), beta 0.04, loss aggregation (per-sequence means: TRL's
``loss_type="grpo"``), clipping, learning rate, AdamW, constant schedule, gradient clipping, one
iteration per rollout, no vLLM, no gradient checkpointing, no evaluation or saving.

* **ours**: ``harness.training.runner.execute`` with ``method=grpo reward=gold``;
* **TRL**: TRL 1.16 ``GRPOTrainer`` (transformers ``generate``; TRL builds its reference model).

Each configuration runs in its own interpreter; the libraries both use are imported before the
clock starts.  Reported per trainer: the **median step** (wall and CPU seconds) over the timed
steps after one warm-up step, the **end to end** time (worker start to the last step's end: data,
model loading, reference set-up, every step), the **generation share** of a step (ours: the
rollout's ``time/generation_s``; TRL: its ``_generate``: prompt rendering, ``generate``, decoding),
**tokens generated per second** (completion tokens / generation time, and per step time), and
**peak memory** from a second, shorter run of each configuration in a fresh process with
``MALLOC_MMAP_THRESHOLD_=131072``: the peak resident set above the worker's resident set before
any model is loaded (libraries imported), as ``bench_dpo_vocab.py`` measures it; on a GPU,
``max_memory_allocated``.  Target: the median step at least 1.5x TRL's at no more memory.  On a
busy machine (load average at or above the CPU count) the verdict reads the CPU-time ratio,
otherwise the wall-clock one; both are printed with the load average.

Numbers go to ``benchmarks/results/bench_grpo-<time>.json``.  Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# a worker with --code imports the harness of another checkout: it must come first on the path
if "--worker" not in sys.argv and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

GROUP = 8
PROMPTS_PER_STEP = 4
MAX_NEW_TOKENS = 64
TEMPERATURE = 1.0
BETA = 0.04
LR = 1e-5
#: the issue's target: ours per step at least this multiple of TRL's speed, at no more peak memory
TARGET_SPEEDUP = 1.5
TRAINERS = ("ours", "trl")
LABELS = {"ours": "ours", "trl": "TRL"}


# --------------------------------------------------------------------------- prompts


def step_prompts(n_steps: int, seed: int = 0) -> list[list[str]]:
    """The prompts of each step as ours draws them (``data=toy data.max_samples=n``: the first n
    rows of the world's ``prompts`` split, one seeded permutation per epoch, ``PROMPTS_PER_STEP``
    a step): TRL is given them in this order with its shuffling off."""
    from harness.training.loop import step_examples
    from harness.worlds.base import get_world

    path = get_world("toy").split_path("prompts")
    rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    rows = rows[:n_steps * PROMPTS_PER_STEP]
    return [[rows[i] for i in step_examples(len(rows), PROMPTS_PER_STEP, seed, s)] for s in range(n_steps)]


# --------------------------------------------------------------------------- workers (subprocesses)


def _common_imports() -> None:
    """Both workers import the same libraries (equal library share of the resident set, and
    neither pays the other's imports inside its clock)."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import trl  # noqa: F401
    import trl.trainer.grpo_trainer  # noqa: F401

    import harness.training.runner  # noqa: F401

    datasets.disable_progress_bars()


def _summary(job: dict[str, Any], steps: list[dict[str, Any]], clock_end: tuple[float, float], setup: tuple[float, float],
             mem: Any, rss_start: float) -> dict[str, Any]:
    warm = job["warmup"]
    timed = steps[warm:] or steps
    n = GROUP * PROMPTS_PER_STEP
    gen_tokens = sum(s["tokens"] for s in timed)
    gen_s = sum(s["gen_s"] for s in timed)
    return {
        "steps": steps, "n_steps": len(steps), "warmup": warm,
        "median_step_s": statistics.median(s["wall_s"] for s in timed),
        "median_step_cpu_s": statistics.median(s["cpu_s"] for s in timed),
        "median_gen_s": statistics.median(s["gen_s"] for s in timed),
        "gen_share": gen_s / sum(s["wall_s"] for s in timed),
        "gen_tokens_per_s": gen_tokens / max(gen_s, 1e-9),
        "step_tokens_per_s": gen_tokens / sum(s["wall_s"] for s in timed),
        "completion_tokens_per_step": gen_tokens / len(timed), "completions_per_step": n,
        "reward_mean": statistics.mean(s["reward"] for s in steps),
        "setup_wall_s": setup[0], "setup_cpu_s": setup[1], "e2e_wall_s": clock_end[0], "e2e_cpu_s": clock_end[1],
        "rss_start_mb": rss_start, "peak_mb": mem.peak_mb(), "peak_delta_mb": mem.peak_mb() - rss_start,
        "cuda": mem.cuda, "memory_resettable": mem.resettable,
    }


def worker_ours(job: dict[str, Any]) -> dict[str, Any]:
    _common_imports()
    import torch
    from bench_dpo import Clock, PeakMemory

    import harness
    from harness.core.config import load_spec
    from harness.training import rollout, runner
    from harness.training.loop import TrainHooks

    mem = PeakMemory()
    rss_start = mem.reset()
    clock = Clock()
    steps: list[dict[str, Any]] = []
    prompts_seen: list[list[str]] = []
    last = {"t": 0.0, "c": 0.0}
    setup: list[tuple[float, float]] = []

    original_chunks = rollout.RolloutSource._my_chunks

    def my_chunks(self: Any, cycle: int) -> Any:
        out = original_chunks(self, cycle)
        prompts_seen.append([p if isinstance(p, str) else p[-1]["content"] for _, chunk in out for p in chunk])
        return out

    rollout.RolloutSource._my_chunks = my_chunks  # type: ignore[method-assign]

    def first_step() -> None:
        setup.append(clock.now())
        last["t"], last["c"] = time.perf_counter(), time.process_time()

    def on_log(row: dict[str, Any]) -> None:
        if "loss" not in row:
            return
        t, c = time.perf_counter(), time.process_time()
        n = GROUP * PROMPTS_PER_STEP
        steps.append({"step": int(row["step"]), "wall_s": t - last["t"], "cpu_s": c - last["c"],
                      "gen_s": float(row["time/generation_s"]), "tokens": float(row["rollout/response_length"]) * n,
                      "reward": float(row["rollout/reward_mean"]), "loss": float(row["loss"])})
        last["t"], last["c"] = t, c
        steps[-1]["e2e"] = clock.now()

    spec = load_spec(None, [
        f"model={job['model_dir']}", "data=toy", f"data.max_samples={job['n_prompts']}", "data.eval_fraction=0.0",
        "method=grpo", f"method.group_size={GROUP}", f"method.beta={BETA}", f"method.max_new_tokens={MAX_NEW_TOKENS}",
        f"method.temperature={TEMPERATURE}", "method.top_p=1.0", "method.iterations=1", "method.clip_eps=0.2",
        "method.loss_aggregation=sequence", "method.scale_rewards=true", "reward=gold",
        f"train.batch_size={PROMPTS_PER_STEP}", "train.grad_accum=1", f"train.precision={job['precision']}",
        f"train.lr={LR}", "train.schedule=constant", "train.warmup_ratio=0.0", "train.weight_decay=0.0",
        "train.max_grad_norm=1.0", f"train.max_steps={job['n_steps']}", "train.gradient_checkpointing=false",
        "train.log_every=1", "train.progress=false", "eval.enabled=false", "tracking.mode=disabled", "seed=0",
        f"output_dir={job['runs_dir']}", f"name={job['label']}", *job.get("overrides", []),
    ])
    runner.execute(spec, hooks=TrainHooks(on_first_step=first_step, on_log=on_log), tracking="disabled")
    out = _summary(job, steps, steps[-1]["e2e"], setup[0], mem, rss_start)
    return {**out, "trainer": "ours", "precision": job["precision"], "prompts": prompts_seen,
            "code": str(Path(harness.__file__).resolve().parent.parent), "threads": torch.get_num_threads()}


def worker_trl(job: dict[str, Any]) -> dict[str, Any]:
    _common_imports()
    import torch
    from bench_dpo import Clock, PeakMemory
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from harness.worlds.toy import gold_reward

    mem = PeakMemory()
    rss_start = mem.reset()
    clock = Clock()
    order = [p for step in job["prompts"] for p in step]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in order])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)

    def gold(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        """The toy world's gold reward (what ``reward=gold`` scores with) as a TRL reward function."""
        return [gold_reward(p[-1]["content"], c[-1]["content"]) for p, c in zip(prompts, completions, strict=True)]

    steps: list[dict[str, Any]] = []
    prompts_seen: list[list[str]] = []
    gen = {"s": 0.0}
    last = {"t": 0.0, "c": 0.0}
    setup: list[tuple[float, float]] = []

    class Marks(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            setup.append(clock.now())
            last["t"], last["c"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            t, c = time.perf_counter(), time.process_time()
            steps.append({"step": int(state.global_step), "wall_s": t - last["t"], "cpu_s": c - last["c"],
                          "gen_s": gen["s"], "e2e": clock.now()})
            gen["s"] = 0.0
            last["t"], last["c"] = t, c

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs and "train_runtime" not in logs and steps:
                s = steps[-1]
                s["tokens"] = float(logs["completions/mean_length"]) * GROUP * PROMPTS_PER_STEP
                s["reward"] = float(logs["reward"])
                s["loss"] = float(logs["loss"])

    cfg = GRPOConfig(
        output_dir=str(Path(job["runs_dir"]) / job["label"]), per_device_train_batch_size=GROUP * PROMPTS_PER_STEP,
        gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=BETA, num_iterations=1, epsilon=0.2, loss_type="grpo",
        scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch", max_steps=job["n_steps"], gradient_checkpointing=False,
        bf16=job["precision"] == "bf16", fp16=False, use_cpu=device == "cpu", report_to="none", save_strategy="no",
        eval_strategy="no", logging_steps=1, seed=0, disable_tqdm=True, shuffle_dataset=False, disable_dropout=True,
        log_completions=False, use_vllm=False, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=gold, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Marks()])
    original_generate = trainer._generate

    def timed_generate(prompts: list[Any], *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = original_generate(prompts, *a, **k)
        gen["s"] += time.perf_counter() - t0
        prompts_seen.append([p[-1]["content"] for p in prompts[::GROUP]])  # each prompt comes GROUP times in a row
        return out

    trainer._generate = timed_generate
    trainer.train()
    out = _summary(job, steps, steps[-1]["e2e"], setup[0], mem, rss_start)
    return {**out, "trainer": "trl", "precision": job["precision"], "prompts": prompts_seen,
            "threads": torch.get_num_threads()}


WORKERS = {"ours": worker_ours, "trl": worker_trl}


def worker_main(job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    # the harness under test: this checkout's, or another one's (--code), ahead of anything on PYTHONPATH
    sys.path.insert(0, job.get("code") or str(ROOT))
    load0 = os.getloadavg()
    result = WORKERS[job["kind"]](job)
    result["loadavg"] = [load0[0], os.getloadavg()[0]]
    Path(job["result"]).write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------- orchestration


def spawn(job: dict[str, Any], work: Path, label: str, env_extra: dict[str, str]) -> dict[str, Any]:
    """One configuration in a fresh interpreter; its log stays in the work directory."""
    from bench_dpo import WORKER_ENV

    job = {**job, "label": label, "result": str(work / f"{label}.result.json")}
    job_path = work / f"{label}.job.json"
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
        raise SystemExit(f"benchmark worker {label!r} failed (exit {proc.returncode}); log {log}:\n{log.read_text()[-4000:]}")
    return dict(json.loads(Path(job["result"]).read_text()))


def _pick(rows: list[dict[str, Any]], prec: str, trainer: str) -> dict[str, Any]:
    return next(r for r in rows if r["precision"] == prec and r["trainer"] == trainer)


def print_results(rows: list[dict[str, Any]], mem_rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    print()
    print(f"GRPO on {meta['model']}: {PROMPTS_PER_STEP} prompts x {GROUP} completions per step, completions <= "
          f"{MAX_NEW_TOKENS} tokens, T={TEMPERATURE}, beta={BETA}; {meta['warmup']} warm-up + {meta['timed']} timed steps"
          + (f", best of {meta['repeats']} runs" if meta["repeats"] > 1 else "") + f"; torch threads {rows[0]['threads']}")
    print("median step = over the timed steps; end to end = worker start (libraries imported) to the last step's end "
          "(data, model loading, reference set-up, every step); gen = generation")
    unit = "GPU MB" if rows[0]["cuda"] else "RSS MB"
    head = (f"{'precision':<9} {'trainer':<7} {'step s':>7} {'step cpu':>8} {'gen s':>6} {'gen share':>9} "
            f"{'gen tok/s':>9} {'step tok/s':>10} {'tok/step':>8} {'set-up s':>8} {'e2e s':>6} {'e2e cpu':>7} "
            f"{'peak delta ' + unit:>17} {'reward':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        m = _pick(mem_rows, r["precision"], r["trainer"]) if mem_rows else None
        print(f"{r['precision']:<9} {LABELS[r['trainer']]:<7} {r['median_step_s']:>7.3f} {r['median_step_cpu_s']:>8.3f} "
              f"{r['median_gen_s']:>6.3f} {r['gen_share']:>8.0%} {r['gen_tokens_per_s']:>9.0f} "
              f"{r['step_tokens_per_s']:>10.0f} {r['completion_tokens_per_step']:>8.0f} {r['setup_wall_s']:>8.2f} "
              f"{r['e2e_wall_s']:>6.2f} {r['e2e_cpu_s']:>7.2f} {(m['peak_delta_mb'] if m else float('nan')):>17.1f} "
              f"{r['reward_mean']:>7.3f}")
    busy = meta["load_max"] >= (os.cpu_count() or 1)
    cuda = rows[0]["cuda"]
    decide = "wall" if cuda or not busy else "cpu"
    print()
    print(f"Ratios, ours / TRL (speed: TRL's time / ours, higher is better; memory: ours / TRL's, lower is better). "
          f"Target: median step >= {TARGET_SPEEDUP}x at <= 1.0x peak memory; verdict by "
          + ("wall clock" if decide == "wall" else f"CPU time (load average {meta['load_max']:.1f} >= "
                                                   f"{os.cpu_count()} CPUs: wall clock is unreliable)"))
    head2 = (f"{'precision':<9} {'step':>6} {'step cpu':>8} {'gen':>6} {'non-gen':>7} {'e2e':>6} {'e2e cpu':>7} "
             f"{'memory':>7}  verdict")
    print(head2)
    print("-" * len(head2))
    verdicts = []
    for prec in meta["precisions"]:
        ours, trl = _pick(rows, prec, "ours"), _pick(rows, prec, "trl")
        step = trl["median_step_s"] / ours["median_step_s"]
        step_cpu = trl["median_step_cpu_s"] / ours["median_step_cpu_s"]
        gen = trl["median_gen_s"] / ours["median_gen_s"]
        rest = (trl["median_step_s"] - trl["median_gen_s"]) / max(ours["median_step_s"] - ours["median_gen_s"], 1e-9)
        e2e = trl["e2e_wall_s"] / ours["e2e_wall_s"]
        e2e_cpu = trl["e2e_cpu_s"] / ours["e2e_cpu_s"]
        mem = (_pick(mem_rows, prec, "ours")["peak_delta_mb"] / _pick(mem_rows, prec, "trl")["peak_delta_mb"]
               if mem_rows else float("nan"))
        speed = step if decide == "wall" else step_cpu
        reasons = []
        if speed < TARGET_SPEEDUP:
            reasons.append(f"step {speed:.2f}x < {TARGET_SPEEDUP}x")
        if not mem <= 1.0:
            reasons.append("memory not measured" if mem != mem else f"memory {mem:.2f}x > 1.0x")
        ok = not reasons
        verdicts.append({"precision": prec, "step_ratio": step, "step_cpu_ratio": step_cpu, "gen_ratio": gen,
                         "non_gen_ratio": rest, "e2e_ratio": e2e, "e2e_cpu_ratio": e2e_cpu, "memory_ratio": mem,
                         "decided_by": decide, "pass": ok, "reasons": reasons})
        print(f"{prec:<9} {step:>5.2f}x {step_cpu:>7.2f}x {gen:>5.2f}x {rest:>6.2f}x {e2e:>5.2f}x {e2e_cpu:>6.2f}x "
              f"{mem:>6.2f}x  {'PASS' if ok else 'MISS (' + '; '.join(reasons) + ')'}")
    same = all(_pick(rows, p, "ours")["prompts"] == _pick(rows, p, "trl")["prompts"] for p in meta["precisions"])
    print(f"Same prompts in the same steps in both trainers: {'yes' if same else 'NO'}")
    return verdicts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 warm-up + 2 timed steps, 2 memory steps")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (default 8)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--mem-steps", type=int, default=None, help="steps of each memory run (default 3; 0 skips them)")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32,bf16")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per configuration, interleaved; the fastest "
                    "median step is reported (2-3 on a busy machine)")
    ap.add_argument("--code", type=Path, default=None, help="checkout whose harness 'ours' runs (before/after)")
    ap.add_argument("--model", default="toy:bench")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return
    timed = args.steps if args.steps is not None else (2 if args.quick else 8)
    mem_steps = args.mem_steps if args.mem_steps is not None else (2 if args.quick else 3)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        ap.error(f"--precisions: expected fp32 and/or bf16, got {args.precisions!r}")
    if timed < 1 or args.warmup < 0 or args.repeats < 1 or mem_steps < 0:
        ap.error("--steps and --repeats must be >= 1, --warmup and --mem-steps >= 0")
    from bench_dpo import MMAP_THRESHOLD, WORKER_ENV

    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    from harness.training.runner import ensure_model

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"GRPO benchmark: ours vs TRL; {os.cpu_count()} CPUs, load average {load_start[0]:.1f} "
          "(other processes share the CPU: numbers are noisier the higher it is)")
    model_dir = ensure_model(args.model)
    if model_dir is None:
        ap.error(f"--model must be a toy model (toy:<size>), got {args.model!r}")
    n_steps = args.warmup + timed
    prompts = step_prompts(max(n_steps, mem_steps))
    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    try:
        common = {"model_dir": str(model_dir), "runs_dir": str(work / "runs"), "warmup": args.warmup,
                  "code": str(args.code.resolve()) if args.code else None}
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for rep in range(args.repeats):
            for prec in precisions:
                for kind in TRAINERS:
                    label = f"{kind}-{prec}" + (f"-r{rep + 1}" if args.repeats > 1 else "")
                    job = {**common, "kind": kind, "precision": prec, "n_steps": n_steps,
                           "n_prompts": n_steps * PROMPTS_PER_STEP, "prompts": prompts[:n_steps]}
                    env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-{label}")}
                    runs.setdefault((kind, prec), []).append(spawn(job, work, label, env))
        rows = [min(runs[(kind, prec)], key=lambda r: r["median_step_s"]) for prec in precisions for kind in TRAINERS]
        mem_rows: list[dict[str, Any]] = []
        if mem_steps:
            for prec in precisions:
                for kind in TRAINERS:
                    label = f"mem-{kind}-{prec}"
                    job = {**common, "kind": kind, "precision": prec, "n_steps": mem_steps, "warmup": 0,
                           "n_prompts": mem_steps * PROMPTS_PER_STEP, "prompts": prompts[:mem_steps]}
                    env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-{label}"), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
                    mem_rows.append(spawn(job, work, label, env))
        load_end = os.getloadavg()
        meta = {"model": args.model, "warmup": args.warmup, "timed": timed, "repeats": args.repeats,
                "precisions": precisions, "load_max": max(load_start[0], load_end[0],
                                                          *[r["loadavg"][1] for rs in runs.values() for r in rs])}
        verdicts = print_results(rows, mem_rows, meta)
        total = time.perf_counter() - t_start
        print()
        print(f"benchmark took {total:.0f} s; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end "
              f"on {os.cpu_count()} CPUs" + (f"; ours from {args.code}" if args.code else ""))
        report = _report(args, meta, rows, mem_rows, runs, verdicts, load_start, load_end, total)
        from bench_dpo import write_results

        write_results(args.results, "bench_grpo", report, args.quick)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _report(args: argparse.Namespace, meta: dict[str, Any], rows: list[dict[str, Any]], mem_rows: list[dict[str, Any]],
            runs: dict[tuple[str, str], list[dict[str, Any]]], verdicts: list[dict[str, Any]],
            load_start: tuple[float, ...], load_end: tuple[float, ...], total: float) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    return {
        "benchmark": "bench_grpo", "quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {**meta, "group": GROUP, "prompts_per_step": PROMPTS_PER_STEP, "max_new_tokens": MAX_NEW_TOKENS,
                     "temperature": TEMPERATURE, "beta": BETA, "lr": LR, "target_speedup": TARGET_SPEEDUP,
                     "code": str(args.code) if args.code else None},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                    "loadavg_start": list(load_start), "loadavg_end": list(load_end),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "runs": rows, "memory_runs": mem_rows, "ratios": verdicts,
        "all_runs": {f"{k}-{p}": v for (k, p), v in runs.items()}, "total_s": total,
    }


if __name__ == "__main__":
    main()
