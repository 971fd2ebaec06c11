"""SFT on length-skewed data: padding-free (packed) micro-batches against padded ones, same loss.

    nox -s bench -- sft                                  # with the other benchmarks
    python benchmarks/bench_sft_packing.py               # 384 sequences, 8 per step, bf16
    python benchmarks/bench_sft_packing.py --quick       # smoke check

Both variants run the training core (``harness.training.loop.train``, method ``sft``) on the same
tokenised sequences in the same order, each in its own interpreter: ``packing=off`` (right-padded
rows, the plain path of ``harness.modeling.forward``) and ``packing=auto`` (the default: a
micro-batch is packed into rows no wider than its padded width when that saves at least 20% of
its token slots).  The model is the toy world's ``toy:bench`` shape (4 layers x 256, vocabulary
512) built from a config with random weights and room for 512 positions.

Sequence lengths (prompt + response, tokens) are drawn from :data:`ALPACA_LENGTHS`, a histogram
shaped like Alpaca's (Taori et al. 2023, ``tatsu-lab/alpaca``, 52,002 rows): no copy of the data
is available offline here, so the bin shares are OUR ASSUMPTION of its shape -- many short
answers (classification, one-liners) and a long tail of paragraph and essay answers -- anchored
by two published figures: the 512-token maximum length of Stanford's fine-tuning recipe (README,
``train.py`` ``model_max_length=512``), and a mean near 150 tokens, from the dataset size on the
Hub (a train/validation/test split of it lists 33,409,057 bytes for 36,401 rows, 918 bytes a row
over instruction, input, output and a ``text`` column repeating them inside the ~190-byte prompt
template: about 550 bytes of templated text, ~140 tokens at ~4 bytes a token).  The histogram's
mean is printed.  Prompts take 30% of each sequence (at least 8 tokens); token ids are random.

Printed: tokens/s over the training loop (real tokens; wall and CPU time), padding waste, and the
loss of every step in both variants (they must agree: same sequences, same order, same loss up to
bf16 rounding -- fp32 with ``--precision fp32`` agrees to ~1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (low, high, share): sequence lengths in tokens, see the module docstring for where they come from
ALPACA_LENGTHS = ((32, 64, 0.10), (64, 96, 0.20), (96, 128, 0.18), (128, 160, 0.14), (160, 224, 0.18),
                  (224, 320, 0.12), (320, 512, 0.08))
TARGET_SPEEDUP = 1.5
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
       "TRANSFORMERS_VERBOSITY": "error"}


def draw_lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    bins = [(lo, hi) for lo, hi, _ in ALPACA_LENGTHS]
    weights = [w for _, _, w in ALPACA_LENGTHS]
    return [rng.randint(lo, hi - 1) for lo, hi in rng.choices(bins, weights=weights, k=n)]


def histogram_mean() -> float:
    return sum((lo + hi - 1) / 2 * w for lo, hi, w in ALPACA_LENGTHS) / sum(w for *_, w in ALPACA_LENGTHS)


def make_examples(n: int, seed: int, vocab: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    out = []
    for i, length in enumerate(draw_lengths(n, seed)):
        prompt = max(8, int(0.3 * length))
        out.append({"idx": i, "segments": {"completion": {"input_ids": [rng.randrange(3, vocab) for _ in range(length)],
                                                          "prompt_len": prompt}}})
    return out


# --------------------------------------------------------------------------- worker


def worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.core.config import load_spec
    from harness.core.contract import METHODS, SEGMENTS, load_methods
    from harness.modeling.forward import ForwardOptions, set_defaults
    from harness.store.runs import Run
    from harness.training.loop import LoopConfig, OfflineSource, TrainHooks, train
    from harness.training.runner import make_accelerator

    load_methods()
    set_defaults(ForwardOptions(packing=job["packing"]))
    torch.manual_seed(0)
    if job.get("model_dir"):  # scripts/gpu_check.py: a model built elsewhere
        model = LlamaForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    else:
        cfg = LlamaConfig(vocab_size=job["vocab"], hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                          tie_word_embeddings=True, pad_token_id=0)
        model = LlamaForCausalLM(cfg)
    examples = json.loads(Path(job["data"]).read_text())
    spec = load_spec(None, ["method=sft", f"train.precision={job['precision']}", "tracking.mode=disabled"])
    accelerator = make_accelerator(spec)
    steps = len(examples) // job["batch"]
    loop = LoopConfig(lr=1e-4, schedule="constant", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                      batch_size=job["batch"], grad_accum=1, total_steps=steps, precision=job["precision"],
                      gradient_checkpointing=False, log_every=1, eval_every=None, save_every=None, seed=0,
                      progress=False)
    marks: dict[str, float] = {}
    hooks = TrainHooks(on_first_step=lambda: marks.update(t=time.perf_counter(), c=time.process_time()))
    run = Run.create(job["runs"], job["label"], prefix="sft")
    model.to(accelerator.device)
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sft = METHODS.get("sft")
    source = OfflineSource(examples, None, SEGMENTS[sft.data_kind], pad_id=0, batch_size=job["batch"], grad_accum=1,
                           processes=1, rank=0, seed=0)
    result = train(adapter=sft, hp=sft.config_cls(), model=model, accelerator=accelerator, cfg=loop, source=source,
                   eval_examples=[], pad_id=0, eval_reference=None, run=run, hooks=hooks)
    wall, cpu = time.perf_counter() - marks["t"], time.process_time() - marks["c"]
    real = sum(len(e["segments"]["completion"]["input_ids"]) for e in examples[:steps * job["batch"]])
    return {"packing": job["packing"], "losses": result.losses, "tokens": real, "loop_s": wall, "loop_cpu_s": cpu,
            "tokens_per_s": real / wall, "tokens_per_cpu_s": real / cpu, "threads": torch.get_num_threads(),
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


# --------------------------------------------------------------------------- driver


def padding_waste(examples: list[dict[str, Any]], batch: int) -> tuple[float, float]:
    """(share of padded token slots that are padding, share after packing into rows of the batch's width)."""
    from harness.modeling.packing import plan_packs

    real = padded = packed = 0
    for i in range(0, len(examples) - batch + 1, batch):
        lens = [len(e["segments"]["completion"]["input_ids"]) for e in examples[i:i + batch]]
        real += sum(lens)
        padded += batch * max(lens)
        packed += len(plan_packs(lens, max(lens))) * max(lens)
    return 1 - real / padded, 1 - real / packed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 32 sequences")
    ap.add_argument("--sequences", type=int, default=None, help="sequences per run (default 384)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch (one optimizer step each)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per variant; the fastest is kept")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker.read_text())
        Path(job["result"]).write_text(json.dumps(worker(job)))
        return
    n = args.sequences or (32 if args.quick else 384)
    load0 = os.getloadavg()
    print(f"SFT packing: padding-free vs padded micro-batches; {os.cpu_count()} CPUs, load average {load0[0]:.1f} "
          "(other processes share the CPU: wall times move with it, CPU times much less)")
    examples = make_examples(n, seed=0, vocab=512)
    waste, waste_packed = padding_waste(examples, args.batch)
    lens = [len(e["segments"]["completion"]["input_ids"]) for e in examples]
    print(f"{n} sequences, lengths {min(lens)}-{max(lens)} (mean {sum(lens) / n:.0f}; histogram mean "
          f"{histogram_mean():.0f}), {args.batch} per step, {args.precision}; padding is {waste:.0%} of padded token "
          f"slots, {waste_packed:.0%} of packed ones")
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "auto": []}
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        (work / "data.json").write_text(json.dumps(examples))
        env = {**os.environ, **ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "ALIGN_HARNESS_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
        for rep in range(args.repeats):
            for packing in ("off", "auto"):
                label = f"{packing}-{rep}"
                job = {"packing": packing, "vocab": 512, "data": str(work / "data.json"), "batch": args.batch,
                       "precision": args.precision, "runs": str(work / "runs"), "label": label,
                       "result": str(work / f"{label}.json")}
                (work / f"{label}.job.json").write_text(json.dumps(job))
                print(f"  running packing={packing} ...", end="", flush=True)
                t = time.perf_counter()
                with open(work / f"{label}.log", "w") as log:
                    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                                           str(work / f"{label}.job.json")], env=env, stdout=log, stderr=subprocess.STDOUT)
                print(f" {time.perf_counter() - t:.0f} s", flush=True)
                if proc.returncode:
                    raise SystemExit((work / f"{label}.log").read_text()[-3000:])
                runs[packing].append(json.loads(Path(job["result"]).read_text()))
    padded = max(runs["off"], key=lambda r: r["tokens_per_s"])
    packed = max(runs["auto"], key=lambda r: r["tokens_per_s"])
    print()
    head = f"{'variant':<22} {'tokens':>7} {'loop s':>7} {'cpu s':>7} {'tokens/s':>9} {'tok/cpu s':>9} {'loss@1':>8} {'loss@end':>8}"
    print(head)
    print("-" * len(head))
    for name, r in (("padded (packing=off)", padded), ("packed (packing=auto)", packed)):
        print(f"{name:<22} {r['tokens']:>7} {r['loop_s']:>7.2f} {r['loop_cpu_s']:>7.2f} {r['tokens_per_s']:>9.0f} "
              f"{r['tokens_per_cpu_s']:>9.0f} {r['losses'][0]:>8.4f} {r['losses'][-1]:>8.4f}")
    diff = max(abs(a - b) for a, b in zip(padded["losses"], packed["losses"], strict=True))
    speed = packed["tokens_per_s"] / padded["tokens_per_s"]
    cpu = packed["tokens_per_cpu_s"] / padded["tokens_per_cpu_s"]
    ok = speed >= TARGET_SPEEDUP
    print(f"packed / padded tokens/s: {speed:.2f}x wall, {cpu:.2f}x CPU (target >= {TARGET_SPEEDUP}x: "
          f"{'PASS' if ok else 'MISS'}); largest per-step loss difference {diff:.2e} over {len(padded['losses'])} steps")
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end on {os.cpu_count()} CPUs")
    from bench_dpo import write_results

    write_results(args.results, "bench_sft_packing", {
        "sequences": n, "batch": args.batch, "precision": args.precision, "histogram": ALPACA_LENGTHS,
        "padding_waste": waste, "packed_waste": waste_packed, "padded": padded, "packed": packed,
        "speed_ratio": speed, "cpu_speed_ratio": cpu, "max_loss_diff": diff, "loadavg": [load0[0], load1[0]]}, args.quick)


if __name__ == "__main__":
    main()
