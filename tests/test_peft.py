"""The PEFT axis on real (tiny) models: full, LoRA, QLoRA and Prefix-Tuning with any objective.

    .venv/bin/pytest tests/test_peft.py -q

Every run trains for real on the toy world's tiny Llama; QLoRA uses bitsandbytes' 4-bit
CPU kernels.  What is checked: each parameterisation trains DPO, SimPO and SFT from the
CLI; the frozen base stays bit-identical while the adapter moves; reference log-probs
with the adapter disabled equal an explicit copy of the base; saved adapters reload to
identical logits (and merge to the same logits within float tolerance); combinations
that cannot work fail before training with a message naming the fix.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.core.config import ConfigError, load_spec
from harness.core.contract import SEGMENTS
from harness.modeling import peft_setup
from harness.training import runner
from harness.training.refcache import compute_reference_logps

KINDS = ["none", "lora", "qlora", "prefix"]
SHORT = ["model=toy:tiny", "data.max_samples=64", "train.max_steps=3", "train.batch_size=4", "train.progress=false",
         "eval.enabled=false", "tracking.mode=disabled", "train.max_length=64", "train.max_prompt_length=32"]


def losses(run):
    return [r["loss"] for r in sorted((r for r in run.metrics() if "loss" in r), key=lambda r: r["step"])]


# --------------------------------------------------------------------------- spec


def test_peft_spec_is_typed_and_strict():
    spec = load_spec(None, ["method=dpo", "peft=qlora", "peft.lora.r=4", "peft.lora.target_modules=[q_proj,v_proj]",
                            "peft.quant.quant_type=fp4", "peft.quant.double_quant=false"])
    assert spec.peft.kind == "qlora" and spec.peft.lora.r == 4
    assert spec.peft.lora.target_modules == ["q_proj", "v_proj"] and spec.peft.quant.quant_type == "fp4"
    bad = {
        "peft=lorra": "did you mean 'lora'",
        "peft.lora.rank=4": "unknown key 'peft.lora.rank'",
        "peft.lora.r=2.5": "peft.lora.r: expected an integer",
        "peft.lora.r=0": "r must be >= 1",
        "peft.lora.target_modules=all": "peft.lora.target_modules",
        "peft.quant.quant_type=int4": "'nf4', 'fp4'",
        "peft.prefix.num_virtual_tokens=0": "num_virtual_tokens must be >= 1",
        "peft.prefix.prefix_projection=3": "expected true/false",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_spec(None, ["method=dpo", override])


# --------------------------------------------------------------------------- every kind x objective, from the CLI


@pytest.mark.parametrize("method", ["dpo", "simpo", "sft"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_parameterisation_trains_each_objective_from_the_cli(kind, method, tmp_path, tiny_base):
    from harness.cli.main import app
    from harness.store.runs import Run

    out = tmp_path / "runs"
    res = CliRunner().invoke(app, ["run", f"method={method}", f"peft={kind}", *SHORT, "train.lr=1e-3",
                                   f"output_dir={out}", "name=r"])
    assert res.exit_code == 0, res.output
    run = Run(out / "r")
    assert run.status()["status"] == "completed"
    assert len(losses(run)) == 3 and all(math.isfinite(x) for x in losses(run))
    s = run.summary()
    files = {p.name for p in run.final_dir.iterdir()}
    assert "tokenizer.json" in files and s["peft"] == kind and s["peak_memory_mb"] > 0
    if kind == "none":
        assert not s["adapter"] and s["trainable_share"] == 1.0 and "model.safetensors" in files
        return
    assert s["adapter"] and s["base_model"] == str(tiny_base)
    assert {"adapter_config.json", "adapter_model.safetensors", peft_setup.META_FILE} <= files
    assert "model.safetensors" not in files
    assert 0 < s["trainable_params"] < s["total_params"]
    assert s["trainable_share"] == pytest.approx(s["trainable_params"] / s["total_params"])
    n_base = sum(t.numel() for t in _base_tensors(tiny_base).values() if t.dim() > 0) - _tied(tiny_base)
    # 4-bit weights count as the values they hold, so QLoRA's total is LoRA's
    assert s["total_params"] == n_base + s["trainable_params"]


def _base_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _tied(path):
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in _base_tensors(path):
        return _base_tensors(path)["lm_head.weight"].numel()
    return 0


# --------------------------------------------------------------------------- frozen base, saved adapters


class Keep:
    """Wraps ``runner.load_model`` to keep the policy it built and a copy of its frozen weights."""

    def __init__(self) -> None:
        self.models: list = []
        self.frozen: dict[str, torch.Tensor] = {}
        self.real = runner.load_model

    def __call__(self, *args, **kwargs):
        model = self.real(*args, **kwargs)
        if kwargs.get("with_peft", True):
            self.models.append(model)
            self.frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
            self.frozen.update({n: b.detach().clone() for n, b in model.named_buffers()})
            self.adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return model


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


@pytest.mark.parametrize("kind", ["lora", "qlora", "prefix"])
def test_adapter_training_keeps_base_frozen_and_saved_adapter_reloads(kind, run_spec, monkeypatch, tiny_base):
    keep = Keep()
    monkeypatch.setattr(runner, "load_model", keep)
    extra = ["peft.lora.use_rslora=true"] if kind == "lora" else []
    run = runner.execute(run_spec("method=dpo", f"peft={kind}", "train.lr=1e-2", "name=p", *extra))
    model = keep.models[0]
    assert keep.frozen and keep.adapter
    after = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, before in keep.frozen.items():
        assert torch.equal(after[name].detach(), before), f"frozen base weight {name} changed"
    moved = [n for n, p in keep.adapter.items() if not torch.equal(after[n].detach(), p)]
    assert moved, "no adapter parameter moved"

    ids = torch.randint(3, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    trained = _logits(model, ids)
    reloaded = peft_setup.load_trained(run.final_dir)
    assert peft_setup.is_adapter_model(reloaded)
    assert torch.equal(_logits(reloaded, ids), trained)
    with peft_setup.reference_context(model):
        base_logits = _logits(model, ids)
    assert not torch.allclose(trained, base_logits, atol=1e-4), "the adapter did not change the outputs"
    if kind == "lora":
        merged = peft_setup.load_trained(run.final_dir, merge=True)
        assert not peft_setup.is_adapter_model(merged)
        torch.testing.assert_close(_logits(merged, ids), trained, atol=1e-4, rtol=1e-4)
    if kind == "prefix":
        with pytest.raises(ValueError, match="cannot be merged"):
            peft_setup.load_trained(run.final_dir, merge=True)


# --------------------------------------------------------------------------- reference = base with the adapter disabled


def _prepared(run_spec, *overrides):
    spec = run_spec("method=dpo", "train.ref_cache=false", *overrides)
    prep = runner.prepare(spec)
    acc = runner.make_accelerator(spec)
    model = runner.load_model(prep.model_path, spec, "causal_lm", prep.tokenizer.pad_token_id).to(acc.device)
    return spec, prep, acc, model


@pytest.mark.parametrize("kind", ["lora", "qlora", "prefix"])
def test_reference_with_adapter_disabled_equals_explicit_base_copy(kind, run_spec):
    spec, prep, acc, model = _prepared(run_spec, f"peft={kind}")
    # move the adapter far from its initialisation, as after training (or on resume)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ref_train, ref_eval, _ = runner.compute_references(prep, spec, model, acc)

    # an explicit second copy of the base, loaded as the base was (4-bit for QLoRA)
    base = runner.load_model(prep.model_path, spec, "causal_lm", prep.tokenizer.pad_token_id, with_peft=False)
    if kind == "qlora":
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(prep.model_path, dtype=torch.float32,
                                                    **peft_setup.load_kwargs(spec.peft))
    segs = SEGMENTS[prep.adapter.data_kind]
    pad = prep.tokenizer.pad_token_id
    explicit = compute_reference_logps(base, prep.train_examples, segs, pad, 32, None, acc.device)
    with_adapter = compute_reference_logps(model, prep.train_examples, segs, pad, 32, None, acc.device)
    for s in segs:
        torch.testing.assert_close(ref_train[s], explicit[s], atol=1e-5, rtol=0)
        assert not torch.allclose(with_adapter[s], explicit[s], atol=1e-3), "adapter had no effect; test is vacuous"
    assert ref_eval is not None and len(ref_eval["chosen"]) == len(prep.eval_examples)


def test_reference_cache_is_keyed_by_the_base_not_the_adapter(run_spec):
    """LoRA and Prefix share full fine-tuning's reference (the same base); QLoRA's 4-bit base does not."""
    got = {}
    for kind in ("none", "lora", "qlora"):
        spec, prep, acc, model = _prepared(run_spec, f"peft={kind}", "train.ref_cache=true")
        got[kind] = runner.compute_references(prep, spec, model, acc)[0]["chosen"]
        spec_nc, prep_nc, acc_nc, model_nc = _prepared(run_spec, f"peft={kind}")
        # the same values computed afresh (batches may be composed differently: equal to fp32 rounding)
        torch.testing.assert_close(got[kind], runner.compute_references(prep_nc, spec_nc, model_nc, acc_nc)[0]["chosen"],
                                   atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got["none"], got["lora"], atol=1e-5, rtol=1e-6)
    assert not torch.allclose(got["none"], got["qlora"], atol=1e-3)


# --------------------------------------------------------------------------- combinations that cannot work


def test_prefix_with_gradient_checkpointing_fails_before_training(run_spec):
    spec = run_spec("method=dpo", "peft=prefix", "train.gradient_checkpointing=true", "name=gc")
    with pytest.raises(ConfigError, match="train.gradient_checkpointing=false"):
        runner.execute(spec)
    assert not (Path(spec.output_dir) / "gc").exists()  # nothing was started


def test_prefix_with_a_reward_model_fails_before_training(run_spec):
    with pytest.raises(ConfigError, match="use peft=lora"):
        runner.execute(run_spec("method=reward", "peft=prefix", "name=rm"))


def test_qlora_without_bitsandbytes_fails_before_training(run_spec, monkeypatch):
    # a None entry in sys.modules makes `import bitsandbytes` raise ImportError, as when it is absent
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match="install it .*or use peft=lora"):
        runner.check_spec(run_spec("method=dpo", "peft=qlora"))
    runner.check_spec(run_spec("method=dpo", "peft=lora"))  # other kinds need no bitsandbytes


def test_unknown_target_module_fails_before_the_weights_load_and_lists_the_models_modules(run_spec):
    spec = run_spec("method=simpo", "peft=lora", "peft.lora.target_modules=[q_proj,wq]", "name=tm")
    with pytest.raises(ConfigError) as e:
        runner.execute(spec)
    msg = str(e.value)
    assert "'wq' is not a linear module" in msg and "q_proj" not in msg.split("its linear modules")[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert name in msg.split("its linear modules are:")[1]
    from harness.store.runs import Run

    run = Run(Path(spec.output_dir) / "tm")
    assert run.status()["status"] == "failed" and not run.metrics()


def test_cli_reports_a_bad_combination_with_the_fix(tmp_path):
    from harness.cli.main import app

    res = CliRunner().invoke(app, ["run", "method=sft", "peft=prefix", "train.gradient_checkpointing=true",
                                   f"output_dir={tmp_path}"])
    assert res.exit_code == 2 and "gradient_checkpointing" in res.output


def test_reward_model_trains_with_lora(run_spec):
    run = runner.execute(run_spec("method=reward", "peft=lora", "name=rm"))
    s = run.summary()
    assert s["adapter"] and 0 < s["trainable_share"] < 1
    reloaded = peft_setup.load_trained(run.final_dir, model_kind="reward")
    ids = torch.randint(3, 400, (2, 8))
    assert reloaded(input_ids=ids).logits.shape == (2, 1)


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_adapter_run_resumes_with_the_same_losses(kind, run_spec):
    """On resume the reference is still the base (adapter disabled), not the moved policy."""
    from harness.training.loop import TrainHooks

    first = runner.execute(run_spec("method=dpo", f"peft={kind}", "train.save_every=2", "train.lr=1e-2",
                                    "train.max_steps=4", "name=res"))

    def stop(row):  # a completed run is never reopened: resume a copy that was cut short
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.execute(run_spec("method=dpo", f"peft={kind}", "train.save_every=2", "train.lr=1e-2",
                                "train.max_steps=4", "name=cut"), TrainHooks(on_log=stop))
    cut = first.path.parent / "cut"
    resumed = runner.execute(run_spec("method=dpo", f"peft={kind}", "train.save_every=2", "train.lr=1e-2",
                                      "train.max_steps=4", f"train.resume_from={cut / 'checkpoints' / 'step-2'}"))
    assert resumed.path == cut
    assert losses(resumed) == pytest.approx(losses(first), abs=1e-6)
    # checkpoints hold the adapter only: the frozen base is never copied into them
    from safetensors.torch import load_file

    saved = load_file(str(first.path / "checkpoints" / "step-2" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)


def test_paper_ablation_sweeps_validate():
    from harness.sweeps.spec import load_sweep

    root = Path(__file__).resolve().parent.parent / "sweeps"
    rank = load_sweep(root / "lora-rank.yaml")
    (arm,) = rank.arms
    assert [p["peft.lora.r"] for p in arm.grid] == [1, 2, 4, 8, 64]
    assert rank.base["peft"]["lora"]["target_modules"] == ["q_proj", "v_proj"]  # the same modules for every r

    qlora = load_sweep(root / "qlora-vs-lora.yaml")
    kinds = {a.label: (a.overrides["peft.kind"], a.overrides.get("peft.quant.quant_type")) for a in qlora.arms}
    assert kinds == {"lora-bf16": ("lora", None), "qlora-fp4": ("qlora", "fp4"), "qlora-nf4-dq": ("qlora", "nf4")}
    assert len({json.dumps(a.grid) for a in qlora.arms}) == 1  # the same learning-rate grid for every arm
