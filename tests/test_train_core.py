"""The training core on real (tiny) models: every adapter conforms; invariants hold.

Conformance, like Optuna's storage test cases: each registered method trains a few
real steps on the toy world, gives finite losses, moves its parameters, and resumes
from a checkpoint with exactly the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from harness.core.contract import METHODS, load_methods
from harness.training.loop import TrainHooks
from harness.training.runner import execute

load_methods()
#: pipelines whose rounds are other methods' runs (cai, self-rewarding) have their own tests
OFFLINE_METHODS = [n for n in METHODS.names() if METHODS.get(n).data_kind.value != "prompt"
                   and callable(getattr(METHODS.get(n), "objective", None))]


def losses(run):
    rows = [r for r in run.metrics() if "loss" in r]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"])]


def weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("method", OFFLINE_METHODS)
def test_adapter_conformance(method, run_spec, tiny_base):
    spec = run_spec(f"method={method}", "train.save_every=2", "train.lr=1e-3", "name=conf")
    run = execute(spec)
    first = losses(run)
    assert len(first) == 4 and all(math.isfinite(x) for x in first)
    assert run.status()["status"] == "completed"
    summary = run.summary()
    assert summary["trainable_params"] > 0 and summary["tokens_per_s"] > 0

    # parameters moved away from the SFT base
    after, before = weights(run.final_dir), weights(tiny_base)
    moved = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert moved, "no parameter changed"

    # the same run stopped after step 3 and resumed from step 2 reproduces the uninterrupted
    # losses (a completed run is never reopened, so the resume needs a run that was cut short)
    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(run_spec(f"method={method}", "train.save_every=2", "train.lr=1e-3", "name=cut"), TrainHooks(on_log=stop))
    cut = run.path.parent / "cut"
    resumed = execute(run_spec(f"method={method}", "train.save_every=2", "train.lr=1e-3",
                               f"train.resume_from={cut / 'checkpoints' / 'step-2'}"))
    assert resumed.path == cut
    assert losses(resumed) == pytest.approx(first, abs=1e-6)


def test_grad_accumulation_2x4_equals_1x8(run_spec):
    a = execute(run_spec("method=dpo", "train.batch_size=8", "train.grad_accum=1", "name=a"))
    b = execute(run_spec("method=dpo", "train.batch_size=4", "train.grad_accum=2", "name=b"))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    wa, wb = weights(a.final_dir), weights(b.final_dir)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_sft_token_mean_survives_accumulation(run_spec):
    # sequences of different lengths: a per-micro-batch mean would differ from the step mean
    a = execute(run_spec("method=sft", "train.batch_size=8", "name=a"))
    b = execute(run_spec("method=sft", "train.batch_size=2", "train.grad_accum=4", "name=b"))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)


def test_same_seed_same_losses_other_seed_differs(run_spec):
    a = execute(run_spec("method=simpo", "seed=3", "name=a"))
    b = execute(run_spec("method=simpo", "seed=3", "name=b"))
    c = execute(run_spec("method=simpo", "seed=4", "name=c"))
    assert losses(a) == losses(b)
    assert losses(a) != losses(c)


def test_reference_logps_cached_across_runs(run_spec):
    a = execute(run_spec("method=dpo", "name=a"))
    b = execute(run_spec("method=dpo", "method.beta=0.3", "name=b"))
    assert b.summary()["reference_cache"]["hits"] == 2  # train and eval splits
    assert a.summary()["reference_cache"]["hits"] + a.summary()["reference_cache"]["misses"] == 2


def test_interrupted_run_is_marked_and_resumes(run_spec):
    class Stop(KeyboardInterrupt):
        pass

    def on_log(row):
        if row["step"] == 3:
            raise Stop()

    spec = run_spec("method=dpo", "train.save_every=2", "name=killed")
    with pytest.raises(KeyboardInterrupt):
        execute(spec, TrainHooks(on_log=on_log))
    run_dir = spec.output_dir + "/killed"
    assert json.load(open(run_dir + "/status.json"))["status"] == "interrupted"
    resumed = execute(run_spec("method=dpo", "train.save_every=2", f"train.resume_from={run_dir}/checkpoints/step-2"))
    full = execute(run_spec("method=dpo", "name=full"))
    assert [r["step"] for r in resumed.metrics()] == [1, 2, 3, 4]
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6)


def test_failed_run_records_error_and_bad_data_fails_early(run_spec, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "hi", "chosen": 3, "rejected": "b"}) + "\n")
    spec = run_spec("method=dpo", f"data={bad}", "name=bad")
    with pytest.raises(Exception) as e:
        execute(spec)
    assert "row 2" in str(e.value) and "chosen" in str(e.value)
    status = json.load(open(f"{spec.output_dir}/bad/status.json"))
    assert status["status"] == "failed" and "row 2" in status["error"]


def test_existing_run_name_is_never_overwritten(run_spec):
    from harness.store.runs import RunExistsError

    execute(run_spec("method=orpo", "name=same"))
    with pytest.raises(RunExistsError):
        execute(run_spec("method=orpo", "name=same"))


def test_bf16_and_gradient_checkpointing_train(run_spec):
    run = execute(run_spec("method=dpo", "train.precision=bf16", "train.gradient_checkpointing=true"))
    assert all(math.isfinite(x) for x in losses(run))


def test_tokenised_data_is_cached_by_content(run_spec, tiny_base, tmp_path):
    from transformers import AutoTokenizer

    from harness.core.contract import DataKind
    from harness.data.batching import tokenize_cached

    tok = AutoTokenizer.from_pretrained(tiny_base)
    recs = [{"prompt": [{"role": "user", "content": "How was the movie?"}], "chosen": "great .", "rejected": "bad ."}]
    a = tokenize_cached(recs, tok, DataKind.PAIRED, 64, 32, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert tokenize_cached(recs, tok, DataKind.PAIRED, 64, 32, tmp_path) == a
    recs[0]["chosen"] = "lovely ."
    b = tokenize_cached(recs, tok, DataKind.PAIRED, 64, 32, tmp_path)
    assert b != a and len(list(tmp_path.glob("*.json"))) == 2
