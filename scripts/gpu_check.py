"""GPU check: speed, MFU and memory of the training core at a 0.5B / 152k-vocabulary shape, against
TRL's DPOTrainer in the same run, plus LoRA / QLoRA memory and bitsandbytes' CUDA kernels.

    python scripts/gpu_check.py --out gpu-check/          # one CUDA GPU; about 3-4 minutes on an H100/H200
    python scripts/gpu_check.py --smoke --out /tmp/gc     # CPU smoke test of the whole script (tiny model)

Never run by CI or the tests (it needs a GPU for its numbers).  Needs torch with CUDA, transformers,
peft, trl and bitsandbytes.  Nothing is downloaded: the model is a Llama with Qwen2.5-0.5B's shape
(24 layers x 896, 14 heads / 2 KV heads, MLP 4864, tied 151,936-token vocabulary; 494M parameters)
built from a config with random weights and saved to a temp directory, so it loads through
``from_pretrained`` like a real checkpoint.  Its tokenizer is the toy world's 512-token BPE (the
vocabulary's cost is the model's: every position is scored against all 151,936 entries).  Data:
toy preference pairs joined to ~1,000 tokens (``benchmarks/bench_dpo.make_pairs``) and SFT sequences
of Alpaca-shaped lengths (``benchmarks/bench_sft_packing``).  Every configuration runs in its own
interpreter (an OOM or crash costs one row), through the benchmark workers, so the numbers mean
what the benchmarks' mean:

* SFT (ours, packing auto and off): tokens/s, MFU, peak memory;
* DPO: ours (chunked log-probs, the default), ours with the plain full-logits head, TRL with
  ``precompute_ref_log_probs=True`` and TRL as it ships: loop tokens/s, MFU, end-to-end time,
  peak GPU memory (``torch.cuda.max_memory_allocated`` over the whole run);
* DPO with LoRA (r=16, all linear layers) and QLoRA (NF4 + double quantisation base): peak memory,
  tokens/s; and a QLoRA kernel check: the 4-bit layers are bitsandbytes ``Linear4bit`` with
  weights on the GPU, a 4-bit matmul agrees with its dequantised weight, a few steps lower the
  loss and leave the frozen base unchanged (what ``scripts/gpu_check_qlora.py`` checked; this
  script supersedes it).

MFU = model FLOPs per token x tokens/s / the GPU's peak dense bf16 FLOP/s (:data:`PEAK_BF16_TFLOPS`
by device name).  Model FLOPs per trained token: 6 x (non-embedding parameters + the LM head's
V x H) + 6 x layers x hidden x sequence length (causal attention scores and values, forward and
backward); the reference pass is not counted (ours runs it before the loop).  Writes
``gpu_check.json`` and ``gpu_check.md`` (a Markdown table) to ``--out``; exit status 1 if a check
fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: peak dense bf16 tensor FLOP/s (10^12) by a substring of ``torch.cuda.get_device_name`` (vendor data sheets)
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1),
                    ("A10G", 70.0), ("L4", 121.0), ("RTX 4090", 165.2))
#: Qwen2.5-0.5B's shape as a Llama config (its attention has q/k/v biases; a Llama has none)
SHAPE_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151_936}
SHAPE_SMOKE = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 4096}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)


def flops_per_token(shape: dict[str, int], seq: float) -> float:
    h, layers, v, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"], shape["intermediate_size"]
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * inter  # q, k, v, o, gate/up/down
    return 6 * (layers * per_layer + v * h) + 6 * layers * h * seq


def build_model(out: Path, shape: dict[str, int], device: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.worlds.base import get_world

    tok = AutoTokenizer.from_pretrained(get_world("toy").tokenizer_dir())
    cfg = LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1_000_000.0,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out


# --------------------------------------------------------------------------- QLoRA kernel check (a worker)


def qlora_check(job: dict[str, Any]) -> dict[str, Any]:
    """bitsandbytes' 4-bit layers on the device, agreeing with their dequantised weights; a few
    steps on a fixed batch lower the loss and leave the frozen base as it was."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch
    from transformers import AutoModelForCausalLM

    from harness.core.config import LoraSpec, PeftSpec, QuantSpec, RunSpec
    from harness.modeling import peft_setup

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = RunSpec(peft=PeftSpec(kind="qlora", lora=LoraSpec(r=16, alpha=32.0, dropout=0.0),
                                 quant=QuantSpec(quant_type="nf4", double_quant=True, compute_dtype="bf16")))
    kw = peft_setup.load_kwargs(spec.peft)
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.bfloat16, **kw)
    model = peft_setup.apply(model, spec, "causal_lm")
    problems = []
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        return {"problems": ["no bitsandbytes Linear4bit layer in the QLoRA model"]}
    layer = layers[0]
    if layer.weight.device.type != device.type:
        problems.append(f"4-bit weight is on {layer.weight.device}, not {device}")
    w = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    x = torch.randn(4, w.shape[1], device=layer.weight.device, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x).float()
    want = (x @ w.t()).float() + (layer.bias.float() if layer.bias is not None else 0)
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-6)
    if err > 2e-2:
        problems.append(f"4-bit matmul disagrees with the dequantised weight (rel err {err:.3g})")
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0)).to(layer.weight.device)
    # bitsandbytes may re-lay a 4-bit weight out in place on its first use (its CPU kernels do):
    # the snapshot of the frozen base is taken after one forward, before any optimizer step
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        model(input_ids=ids, use_cache=False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad and p.numel() < 2**22}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    after = dict(model.named_parameters())
    changed = [n for n, p in frozen.items() if not torch.equal(after[n].detach(), p)]
    if changed:
        problems.append(f"frozen base weights changed: {changed[:3]}")
    if not losses[-1] < losses[0]:
        problems.append(f"loss did not fall on a fixed batch ({losses[0]:.4f} -> {losses[-1]:.4f})")
    return {"bitsandbytes": bnb.__version__, "linear4bit_layers": len(layers), "weight_device": str(layer.weight.device),
            "quant_type": layer.weight.quant_state.quant_type, "matmul_rel_err": err, "losses": losses,
            "problems": problems}


# --------------------------------------------------------------------------- driver


def spawn_qlora_check(job: dict[str, Any], work: Path) -> dict[str, Any]:
    import subprocess

    path = work / "qlora-check.job.json"
    job = {**job, "result": str(work / "qlora-check.json")}
    path.write_text(json.dumps(job))
    with open(work / "qlora-check.log", "w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--qlora-worker", str(path)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        return {"problems": [f"qlora check crashed (exit {proc.returncode}): "
                             f"{(work / 'qlora-check.log').read_text()[-800:]}"]}
    return dict(json.loads(Path(job["result"]).read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="directory for gpu_check.json and gpu_check.md (required)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU allowed: checks the script only")
    ap.add_argument("--pairs", type=int, default=None, help="DPO pairs per run (default 64; smoke 16)")
    ap.add_argument("--max-length", type=int, default=None, help="DPO sequence length (default 1024; smoke 128)")
    ap.add_argument("--qlora-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.qlora_worker is not None:
        job = json.loads(args.qlora_worker.read_text())
        Path(job["result"]).write_text(json.dumps(qlora_check(job)))
        return 0
    if args.out is None:
        ap.error("--out is required")

    import bench_dpo
    import bench_sft_packing
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("error: no CUDA GPU visible; this check measures GPU speed and memory (use --smoke on CPU)",
              file=sys.stderr)
        return 2
    for k, v in bench_dpo.WORKER_ENV.items():
        os.environ.setdefault(k, v)
    t_all = time.perf_counter()
    shape = SHAPE_SMOKE if args.smoke else SHAPE_05B
    pairs = args.pairs or (16 if args.smoke else 64)
    max_length = args.max_length or (128 if args.smoke else 1024)
    batch_pairs = 8
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    props = torch.cuda.get_device_properties(0) if cuda else None
    peak = peak_tflops(name) if cuda else None
    print(f"GPU check on {name}" + (f" ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
                                    f"peak bf16 {peak} TFLOP/s)" if props else "")
          + f", {'smoke test' if args.smoke else '0.5B shape'}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        model_dir = build_model(work / "model", shape, "cuda" if cuda else "cpu")
        data = bench_dpo.make_pairs(pairs, seed=0, out=work / "pairs.jsonl", max_length=max_length)
        common = {"model_dir": str(model_dir), "lr": 1e-5, "beta": 0.1, "runs_dir": str(work / "runs"),
                  "precision": "bf16", "data": data["path"], "max_length": max_length, "batch_pairs": batch_pairs}
        dpo_runs = [
            ("DPO ours (chunked log-probs)", {"kind": "core", "forward": {"logprobs": "chunked"}}),
            ("DPO ours (plain logits head)", {"kind": "core", "forward": {"logprobs": "plain"}}),
            ("DPO TRL, precompute", {"kind": "trl-pre"}),
            ("DPO TRL, as it ships", {"kind": "trl"}),
            ("DPO ours + LoRA r=16", {"kind": "core", "overrides": ["peft.kind=lora", "peft.lora.r=16",
                                                                    "peft.lora.dropout=0.0", "train.lr=1e-4"]}),
            ("DPO ours + QLoRA r=16 (NF4)", {"kind": "core", "overrides": ["peft.kind=qlora", "peft.lora.r=16",
                                                                           "peft.lora.dropout=0.0", "train.lr=1e-4"]}),
        ]
        for i, (label, extra) in enumerate(dpo_runs):
            t = time.perf_counter()
            env = {"ALIGN_HARNESS_CACHE": str(work / f"cache-{i}")}
            try:
                r = bench_dpo.spawn({**common, **extra}, work, f"dpo-{i}", env)
            except SystemExit as e:  # one configuration failing (an OOM) is a row, not the end of the check
                problems.append(f"{label}: {str(e).splitlines()[0]}")
                print(f"  {label}: FAILED ({time.perf_counter() - t:.0f} s)")
                continue
            seq = r["tokens"] / (2 * pairs)
            rows.append({"run": label, "kind": "dpo", "tokens_per_s": r["tokens_per_s"],
                         "mfu": (flops_per_token(shape, seq) * r["tokens_per_s"] / (peak * 1e12)) if peak else None,
                         "peak_mb": bench_dpo._whole_peak(r), "loop_s": r["loop_s"], "e2e_s": r["e2e_wall_s"],
                         "first_loss": r["first_loss"], "mean_seq": seq})
        sft = bench_sft_packing.make_examples(128 if not args.smoke else 32, seed=0, vocab=512)
        (work / "sft.json").write_text(json.dumps(sft))
        for packing in ("auto", "off"):
            job = {"packing": packing, "vocab": 512, "model_dir": str(model_dir), "data": str(work / "sft.json"),
                   "batch": 8, "precision": "bf16", "runs": str(work / "runs"), "label": f"sft-{packing}",
                   "result": str(work / f"sft-{packing}.json")}
            (work / f"sft-{packing}.job.json").write_text(json.dumps(job))
            import subprocess

            with open(work / f"sft-{packing}.log", "w") as log:
                proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sft_packing.py"), "--worker",
                                       str(work / f"sft-{packing}.job.json")], stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
            label = f"SFT ours, packing={packing}"
            if proc.returncode:
                problems.append(f"{label}: exit {proc.returncode}")
                continue
            r = json.loads(Path(job["result"]).read_text())
            seq = sum(len(e["segments"]["completion"]["input_ids"]) for e in sft) / len(sft)
            rows.append({"run": label, "kind": "sft", "tokens_per_s": r["tokens_per_s"],
                         "mfu": (flops_per_token(shape, seq) * r["tokens_per_s"] / (peak * 1e12)) if peak else None,
                         "peak_mb": r.get("peak_mb"), "loop_s": r["loop_s"], "e2e_s": None,
                         "first_loss": r["losses"][0], "mean_seq": seq})
        qlora = spawn_qlora_check({"model_dir": str(model_dir)}, work)
        problems += [f"QLoRA kernels: {p}" for p in qlora.get("problems", [])]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {r["run"]: r for r in rows}

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in by and b in by and by[a].get(key) and by[b].get(key):
            return by[a][key] / by[b][key]
        return None

    ratios = {
        "dpo_speed_vs_trl_precompute": ratio("DPO ours (chunked log-probs)", "DPO TRL, precompute", "tokens_per_s"),
        "dpo_speed_vs_trl": ratio("DPO ours (chunked log-probs)", "DPO TRL, as it ships", "tokens_per_s"),
        "dpo_memory_vs_trl_precompute": ratio("DPO ours (chunked log-probs)", "DPO TRL, precompute", "peak_mb"),
        "dpo_memory_vs_trl": ratio("DPO ours (chunked log-probs)", "DPO TRL, as it ships", "peak_mb"),
        "chunked_vs_plain_memory": ratio("DPO ours (chunked log-probs)", "DPO ours (plain logits head)", "peak_mb"),
        "sft_packed_vs_padded_speed": ratio("SFT ours, packing=auto", "SFT ours, packing=off", "tokens_per_s"),
    }
    if cuda and not args.smoke:
        mem = {k: by[k]["peak_mb"] for k in ("DPO ours (chunked log-probs)", "DPO ours + LoRA r=16",
                                             "DPO ours + QLoRA r=16 (NF4)") if k in by}
        if len(mem) == 3 and not mem["DPO ours + QLoRA r=16 (NF4)"] < mem["DPO ours + LoRA r=16"] < mem["DPO ours (chunked log-probs)"]:
            problems.append(f"peak memory does not order QLoRA < LoRA < full: {mem}")
        if ratios["chunked_vs_plain_memory"] is not None and ratios["chunked_vs_plain_memory"] >= 1.0:
            problems.append("the chunked log-prob path does not lower peak memory at a 152k vocabulary")
    report = {"device": name, "peak_bf16_tflops": peak, "smoke": args.smoke, "shape": shape, "pairs": pairs,
              "max_length": max_length, "batch_pairs": batch_pairs, "torch": torch.__version__, "rows": rows,
              "ratios": ratios, "qlora_check": qlora, "problems": problems, "total_s": time.perf_counter() - t_all}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    lines = [f"# GPU check: {name}", "",
             f"Llama {'smoke' if args.smoke else '0.5B'} shape {shape}, bf16 autocast, DPO {pairs} pairs x "
             f"<= {max_length} tokens, {batch_pairs} pairs per step; peak bf16 {peak} TFLOP/s", "",
             "| run | tokens/s | MFU | peak memory MB | loop s | end to end s | loss@1 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        peak_mb = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "n/a"
        e2e = f"{r['e2e_s']:.1f}" if r["e2e_s"] is not None else "-"
        lines.append(f"| {r['run']} | {r['tokens_per_s']:.0f} | {mfu} | {peak_mb} | {r['loop_s']:.1f} | {e2e} | "
                     f"{r['first_loss']:.4f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" if v is not None else f"| {k} | n/a |" for k, v in ratios.items()]
    lines += ["", f"QLoRA kernels: {json.dumps({k: v for k, v in qlora.items() if k != 'problems'})}", "",
              "Problems: " + ("; ".join(problems) if problems else "none"), ""]
    (args.out / "gpu_check.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"total {time.perf_counter() - t_all:.0f} s; written to {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
