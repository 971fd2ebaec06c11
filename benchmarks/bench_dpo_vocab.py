"""DPO at a large vocabulary: peak memory and throughput of our core against TRL's ``DPOTrainer``.

    nox -s bench -- vocab                                  # with the other benchmarks
    python benchmarks/bench_dpo_vocab.py                   # 128,256-token vocabulary, sequences of 512
    python benchmarks/bench_dpo_vocab.py --quick           # smoke check

The model is the toy world's ``toy:bench`` body (4 layers x 256, tied embeddings) built from a
config with a 128,256-token vocabulary (Llama 3's size) and random weights: no download.  Its
tokenizer is the toy world's 512-token BPE, so every token id is below 512 while the model
scores all 128,256 vocabulary entries at every position -- the compute and memory of a large
vocabulary are there, only the text is small (the vocabulary is "faked" by the model, not the
tokenizer).  Pairs are toy responses joined to 480-512 tokens (prompt <= 64), 4 pairs per step.

Each configuration runs in a fresh interpreter (``benchmarks/bench_dpo.py``'s workers): ours
(``harness.training.runner.execute``: reference pass, then the loop), TRL with
``precompute_ref_log_probs=True`` and TRL as it ships (a reference model run every step), all in
bf16 autocast with the same settings (AdamW, lr, beta, no checkpointing).  Memory is the peak
resident set of the whole run (from model load to the last step) with
``MALLOC_MMAP_THRESHOLD_=131072``, so freed tensors go back to the OS and RSS follows what is
allocated rather than glibc's retained heap, in every configuration alike; on a GPU it is
``torch.cuda.max_memory_allocated``.  The memory ratio that decides is the peak DELTA: the peak
above the resident set when the worker starts (libraries imported, no model yet), i.e. everything
the training job itself allocates -- weights, reference model or reference pass, activations,
logits or their blocks, gradients, optimizer state; the libraries' resident share (the same in
both) is left out.  Also printed: the whole-process peak, and "growth", the peak above the
resident set once the model is loaded.  Throughput is tokens over the training loop's wall time
and CPU time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dpo  # noqa: E402

VOCAB = 128_256
MAX_LENGTH = 512
BATCH_PAIRS = 4
#: the issue's targets against TRL: peak memory at most this share, throughput at least this multiple
TARGET_MEMORY = 0.4
TARGET_SPEEDUP = 1.3


def build_model(out: Path, vocab: int) -> Path:
    """toy:bench's shape with a ``vocab``-entry vocabulary, random weights, the toy tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.worlds.base import get_world

    world = get_world("toy")
    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir())
    shape = dict(world.base_models["bench"].shape)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=1024, tie_word_embeddings=True,
                      num_key_value_heads=shape["num_attention_heads"], bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _delta(r: dict[str, Any]) -> float:
    """Peak memory of the run above the worker's resident set before any model was loaded."""
    return bench_dpo._whole_peak(r) - r["rss_start_mb"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 8 pairs, sequences of 256")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per run (default 16: 4 steps of 4)")
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--peers", default="trl-pre,trl")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    pairs = args.pairs or (8 if args.quick else 16)
    max_length = args.max_length or (256 if args.quick else MAX_LENGTH)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for k, v in bench_dpo.WORKER_ENV.items():
        os.environ.setdefault(k, v)
    load0 = os.getloadavg()
    print(f"DPO at a {args.vocab:,}-token vocabulary: ours vs TRL; {os.cpu_count()} CPUs, load average {load0[0]:.1f} "
          "(other processes share the CPU: wall times move with it, CPU times much less)")
    work = Path(tempfile.mkdtemp(prefix="bench-vocab-"))
    try:
        model_dir = build_model(work / "model", args.vocab)
        data = bench_dpo.make_pairs(pairs, seed=0, out=work / "pairs.jsonl", max_length=max_length)
        common = {"model_dir": str(model_dir), "lr": 1e-5, "beta": 0.1, "runs_dir": str(work / "runs"),
                  "precision": args.precision, "data": data["path"], "max_length": max_length,
                  "batch_pairs": BATCH_PAIRS}
        rows = []
        for kind in ["core", *peers]:
            env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-{kind}"), "MALLOC_MMAP_THRESHOLD_": str(bench_dpo.MMAP_THRESHOLD)}
            rows.append(bench_dpo.spawn({**common, "kind": kind}, work, f"vocab-{kind}", env))
        ours = rows[0]
        print()
        print(f"{pairs} pairs x 1 epoch, {BATCH_PAIRS} pairs per step, sequences <= {max_length} tokens, "
              f"{ours['total_params'] / 1e6:.1f}M params ({args.vocab:,} x 256 tied embedding), {args.precision}, "
              f"torch threads {ours['threads']}")
        unit = "GPU MB" if ours["cuda"] else "RSS MB"
        head = (f"{'trainer':<8} {'tokens':>7} {'loop s':>7} {'loop cpu s':>10} {'tok/s':>7} {'e2e s':>7} "
                f"{'peak ' + unit:>11} {'delta MB':>8} {'growth MB':>9} {'loss@1':>7}")
        print(head)
        print("-" * len(head))
        for r in rows:
            growth = bench_dpo._whole_peak(r) - r["rss_after_load_mb"]
            print(f"{bench_dpo.LABELS[r['trainer']]:<8} {r['tokens']:>7} {r['loop_s']:>7.2f} {r['loop_cpu_s']:>10.2f} "
                  f"{r['tokens_per_s']:>7.0f} {r['e2e_wall_s']:>7.2f} {bench_dpo._whole_peak(r):>11.0f} "
                  f"{_delta(r):>8.0f} {growth:>9.0f} {r['first_loss']:>7.4f}")
        print()
        print(f"Ratios, ours / peer. Targets: peak memory <= {TARGET_MEMORY}x, throughput >= {TARGET_SPEEDUP}x")
        head2 = (f"{'peer':<8} {'PEAK DELTA':>10} {'peak':>6} {'growth':>7} {'loop tok/s':>10} {'loop cpu':>8} "
                 f"{'end to end':>10}  verdict")
        print(head2)
        print("-" * len(head2))
        verdicts = []
        for r in rows[1:]:
            mem = _delta(ours) / _delta(r)
            whole = bench_dpo._whole_peak(ours) / bench_dpo._whole_peak(r)
            growth = (bench_dpo._whole_peak(ours) - ours["rss_after_load_mb"]) / (bench_dpo._whole_peak(r) - r["rss_after_load_mb"])
            speed = ours["tokens_per_s"] / r["tokens_per_s"]
            cpu = r["loop_cpu_s"] / ours["loop_cpu_s"]
            e2e = r["e2e_wall_s"] / ours["e2e_wall_s"]
            ok = mem <= TARGET_MEMORY and speed >= TARGET_SPEEDUP
            verdicts.append({"peer": r["trainer"], "memory_ratio": mem, "whole_peak_ratio": whole, "growth_ratio": growth,
                             "speed_ratio": speed, "cpu_speed_ratio": cpu, "end_to_end_ratio": e2e, "pass": ok})
            print(f"{bench_dpo.LABELS[r['trainer']]:<8} {mem:>9.2f}x {whole:>5.2f}x {growth:>6.2f}x {speed:>9.2f}x "
                  f"{cpu:>7.2f}x {e2e:>9.2f}x  {'PASS' if ok else 'MISS'}")
        same = all(r.get("mismatched_sequences", 0) == 0 for r in rows)
        print(f"Same token ids in both trainers: {'yes' if same else 'NO'}")
        load1 = os.getloadavg()
        print(f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end on {os.cpu_count()} CPUs")
        bench_dpo.write_results(args.results, "bench_dpo_vocab", {
            "vocab": args.vocab, "max_length": max_length, "pairs": pairs, "batch_pairs": BATCH_PAIRS,
            "precision": args.precision, "runs": rows, "ratios": verdicts, "loadavg": [load0[0], load1[0]]}, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
