"""The training core's one forward gives every method the same losses and gradients whichever
way it computes them: chunked vs plain log-probs, packed vs padded rows, prompts shared by rows
computed once or per row (fp32, 1e-5 relative to
magnitudes above 1, as in tests/test_logprobs_chunked.py); the auto rules pick what the module
docstring of ``harness.modeling.forward`` promises; the reference pass and the held-out loss go
through the same path as the training step; gradient accumulation still equals one big batch
with packing on.

Tiny in-memory Llamas (vocab 384, hidden 32, 2 layers) and the toy world's tiny base; seconds.
"""

from __future__ import annotations

import logging
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.core.contract import METHODS, SEGMENTS, Normalizer, load_methods
from harness.data.batching import collate
from harness.modeling import forward
from harness.modeling.forward import PACK_MIN_SAVING, ForwardOptions, forward_segments

load_methods()
VOCAB = 384
TOL = 1e-5
#: every offline method with a log-prob objective (reward models score with their own head)
METHODS_LP = [n for n in METHODS.names()
              if METHODS.get(n).data_kind.value != "prompt" and METHODS.get(n).model_kind == "causal_lm"
              and callable(getattr(METHODS.get(n), "objective", None))]
VARIANTS = [ForwardOptions(lp, pk, "off") for lp in ("plain", "chunked") for pk in ("off", "on")] + [
    ForwardOptions("chunked", pk, "on") for pk in ("off", "on")]  # prompt sharing reads the chunked head


def tiny_llama(seed: int = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, attn_implementation=attn)
    return LlamaForCausalLM(cfg)


def examples_for(kind: str, seed: int = 0, n: int = 6) -> list[dict]:
    """Examples of a data kind with very different lengths (3 to 90 tokens), one reply of a
    single token, prompts of 1 to 30 tokens: rows that pack several to a row."""
    g = random.Random(seed)
    tok = lambda k: [g.randrange(1, VOCAB) for _ in range(k)]  # noqa: E731
    segs = SEGMENTS[METHODS.get(kind).data_kind]
    out = []
    for i in range(n):
        p = g.choice([1, 4, 12, 30])
        prompt = tok(p)
        ex = {"idx": i, "segments": {s: {"input_ids": prompt + tok(g.choice([1, 2, 9, 25, 60])), "prompt_len": p}
                                     for s in segs}}
        if "kl" in segs:
            ex["label"] = i % 2 == 0
        out.append(ex)
    return out


def err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach(), want.detach()
    return float(((got - want).abs() / want.abs().clamp(min=1)).max())


def loss_and_grads(model, adapter, batch, reference, norm, options):
    model.zero_grad(set_to_none=True)
    out = adapter.objective(adapter.config_cls(), forward_segments(
        model, batch, adapter.model_kind, options=options), reference, norm)
    out.loss.backward()
    grads = [p.grad.detach().clone() for p in (model.model.embed_tokens.weight,
                                               model.model.layers[0].self_attn.q_proj.weight,
                                               model.model.layers[1].mlp.down_proj.weight)]
    return out.loss.detach(), grads


@pytest.mark.parametrize("method", METHODS_LP)
def test_every_method_same_loss_and_gradients_on_every_path(method):
    adapter = METHODS.get(method)
    segs = SEGMENTS[adapter.data_kind]
    model = tiny_llama()
    examples = examples_for(method)
    batch = collate(examples, 0, segs)
    norm = Normalizer(sequences=len(examples), tokens={s: batch.n_tokens(s) for s in segs})
    g = torch.Generator().manual_seed(1)
    reference = {s: -torch.rand(len(examples), generator=g) * 50 for s in segs} if adapter.needs_reference else None
    want, want_g = loss_and_grads(model, adapter, batch, reference, norm, ForwardOptions("plain", "off"))
    assert torch.isfinite(want) and float(want) != 0
    for opts in VARIANTS[1:]:
        got, got_g = loss_and_grads(model, adapter, batch, reference, norm, opts)
        assert err(got, want) < TOL, opts
        for a, b in zip(got_g, want_g):
            assert err(a, b) < TOL, opts


def test_packing_really_packs_and_chunked_really_chunks(monkeypatch):
    """The variants above are not four names for one computation: "on" runs fewer, packed rows
    with restarting positions, "chunked" never asks the model for logits."""
    import harness.modeling.logprobs as lp

    model = tiny_llama()
    batch = collate(examples_for("dpo"), 0, SEGMENTS[METHODS.get("dpo").data_kind])
    calls = []
    real_call = lp._call

    def spy(model, input_ids, attention_mask, keep, forward_kwargs):
        out = real_call(model, input_ids, attention_mask, keep, forward_kwargs)
        calls.append((tuple(input_ids.shape), "position_ids" in forward_kwargs, out[0].shape[-1]))
        return out

    monkeypatch.setattr(lp, "_call", spy)
    forward_segments(model, batch, "causal_lm", options=ForwardOptions("chunked", "on"))
    forward_segments(model, batch, "causal_lm", options=ForwardOptions("plain", "off"))
    (packed_shape, packed_pos, hidden), (padded_shape, padded_pos, logits) = calls
    assert packed_shape[0] < padded_shape[0] and packed_shape[1] <= padded_shape[1] and packed_pos
    assert packed_shape[0] * packed_shape[1] <= (1 - PACK_MIN_SAVING) * padded_shape[0] * padded_shape[1]
    assert not padded_pos
    assert hidden == 32 and logits == VOCAB  # chunked: hidden states out of the model; plain: logits


def test_token_level_values_agree_on_every_path():
    model = tiny_llama()
    batch = collate(examples_for("dpo", seed=2), 0, ("chosen", "rejected"))
    want = forward_segments(model, batch, "causal_lm", tokens=True, options=ForwardOptions("plain", "off"))
    for opts in VARIANTS[1:]:
        got = forward_segments(model, batch, "causal_lm", tokens=True, options=opts)
        for s in ("chosen", "rejected"):
            assert torch.equal(got[s].token_mask, want[s].token_mask)
            assert err(got[s].token_logps, want[s].token_logps) < TOL
            assert err(got[s].token_logps.sum(-1), got[s].logps) < TOL


def test_auto_rules():
    """auto: chunked where exact; packs a length-skewed batch, leaves a uniform one padded."""
    model = tiny_llama()
    assert forward.logprob_path(model) == "chunked"
    skewed = collate(examples_for("sft", seed=3, n=8), 0, ("completion",))
    assert forward._packed_rows(model, skewed, "auto") is not None
    g = random.Random(0)
    uniform = [{"idx": i, "segments": {"completion": {"input_ids": [g.randrange(1, VOCAB) for _ in range(40 + i % 3)],
                                                      "prompt_len": 5}}} for i in range(8)]
    assert forward._packed_rows(model, collate(uniform, 0, ("completion",)), "auto") is None
    assert forward._packed_rows(model, collate(uniform, 0, ("completion",)), "on") is not None
    assert forward._packed_rows(model, skewed, "off") is None


def test_fallbacks_are_exact_and_logged_once(caplog):
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(tiny_llama(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    batch = collate(examples_for("sft", seed=3, n=8), 0, ("completion",))
    want = forward_segments(model, batch, "causal_lm", options=ForwardOptions("plain", "off"))
    with caplog.at_level(logging.INFO, logger="harness.modeling.forward"):
        for _ in range(2):
            got = forward_segments(model, batch, "causal_lm", options=ForwardOptions("auto", "on"))
    assert err(got["completion"].logps, want["completion"].logps) < TOL
    msgs = [r.getMessage() for r in caplog.records if "packing: off" in r.getMessage()]
    assert len(msgs) == 1


def test_options_per_model_and_process(monkeypatch):
    seen = []
    real = forward.per_position_logps

    def spy(model, batch, options=None):
        seen.append(options or forward.options_for(model))
        return real(model, batch, options)

    monkeypatch.setattr(forward, "per_position_logps", spy)
    a, b = tiny_llama(), tiny_llama(seed=1)
    batch = collate(examples_for("sft"), 0, ("completion",))
    forward.configure(a, ForwardOptions("plain", "off"))
    try:
        with forward.defaults(ForwardOptions("chunked", "on")):
            forward_segments(a, batch, "causal_lm")
            forward_segments(b, batch, "causal_lm")
        forward_segments(b, batch, "causal_lm")
    finally:
        forward.configure(a, None)
    assert seen == [ForwardOptions("plain", "off"), ForwardOptions("chunked", "on"), ForwardOptions()]
    with pytest.raises(ValueError, match="packing"):
        ForwardOptions("auto", "yes")  # type: ignore[arg-type]


def test_reference_pass_and_eval_loss_use_the_training_forward(monkeypatch):
    """compute_reference_logps and evaluate_loss call forward_segments with the model's options,
    and the reference pass (batched by length) equals per-example forwards."""
    from harness.training.loop import evaluate_loss
    from harness.training.refcache import compute_reference_logps

    model = tiny_llama()
    examples = examples_for("dpo", seed=4, n=7)
    forward.configure(model, ForwardOptions("chunked", "on"))
    used = []
    real = forward.per_position_logps

    def spy(m, batch, options=None):
        used.append(options or forward.options_for(m))
        return real(m, batch, options)

    monkeypatch.setattr(forward, "per_position_logps", spy)
    try:
        ref = compute_reference_logps(model, examples, ("chosen", "rejected"), 0, 3, None, torch.device("cpu"))
        evaluate_loss(METHODS.get("dpo"), METHODS.get("dpo").config_cls(), model, examples, ref, 0, 3,
                      torch.device("cpu"))
    finally:
        forward.configure(model, None)
    assert used and all(o == ForwardOptions("chunked", "on") for o in used)
    with torch.no_grad():
        for ex in examples:
            one = forward_segments(model, collate([ex], 0, ("chosen", "rejected")), "causal_lm",
                                   options=ForwardOptions("plain", "off"))
            for s in ("chosen", "rejected"):
                assert err(ref[s][ex["idx"]], one[s].logps[0]) < TOL


def test_grad_accumulation_2x4_equals_1x8_with_packing(run_spec):
    """Packing on (forced, so every micro-batch is packed): 2 micro-batches of 4 pairs give the
    weights of 1 of 8, and the same losses as the padded plain path."""
    from safetensors.torch import load_file

    from harness.training.runner import execute

    def weights(run):
        return load_file(str(run.final_dir / "model.safetensors"))

    def losses(run):
        return [r["loss"] for r in sorted((r for r in run.metrics() if "loss" in r), key=lambda r: r["step"])]

    with forward.defaults(ForwardOptions("chunked", "on")):
        a = execute(run_spec("method=dpo", "train.batch_size=8", "train.grad_accum=1", "name=a"))
        b = execute(run_spec("method=dpo", "train.batch_size=4", "train.grad_accum=2", "name=b"))
    with forward.defaults(ForwardOptions("plain", "off")):
        c = execute(run_spec("method=dpo", "train.batch_size=8", "train.grad_accum=1", "train.ref_cache=false",
                             "name=c"))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)
    assert losses(a) == pytest.approx(losses(c), abs=1e-5)
    wa, wb, wc = weights(a), weights(b), weights(c)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(wa[k], wc[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["dpo", "sft", "kto"])
def test_accumulated_gradients_with_packing_equal_one_big_batch(method):
    """The gradient itself (not weights after Adam, which hides a constant scale): 2 packed
    micro-batches of 4 with the step's Normalizer == 1 packed batch of 8 == 1 padded plain batch."""
    adapter = METHODS.get(method)
    segs = SEGMENTS[adapter.data_kind]
    model = tiny_llama()
    examples = examples_for(method, seed=5, n=8)
    full = collate(examples, 0, segs)
    norm = Normalizer(sequences=8, tokens={s: full.n_tokens(s) for s in segs})
    g = torch.Generator().manual_seed(2)
    reference = {s: -torch.rand(8, generator=g) * 50 for s in segs} if adapter.needs_reference else None
    hp = adapter.config_cls()
    params = [p for p in model.parameters() if p.requires_grad]

    def grad(micro, options):
        model.zero_grad(set_to_none=True)
        for batch in micro:
            ref = None if reference is None else {s: reference[s][batch.idx] for s in segs}
            adapter.objective(hp, forward_segments(model, batch, "causal_lm", options=options), ref, norm).loss.backward()
        return [p.grad.detach().clone() for p in params]

    halves = [collate(examples[:4], 0, segs), collate(examples[4:], 0, segs)]
    want = grad([full], ForwardOptions("plain", "off"))
    for got in (grad(halves, ForwardOptions("chunked", "on")), grad([full], ForwardOptions("chunked", "on"))):
        assert max(err(a, b) for a, b in zip(got, want)) < TOL


def test_probe_and_reference_pass_leave_quantised_weights_alone(run_spec):
    """bitsandbytes re-packs a 4-bit weight in place (scales rounded to bf16) on its first eval-mode
    forward without gradients on AVX512-BF16 CPUs; the packing probe and the reference pass are
    such forwards and must not change the weights a QLoRA run then trains on."""
    import bitsandbytes as bnb

    from harness.modeling.packing import isolation_probe
    from harness.training import runner
    from harness.training.refcache import compute_reference_logps

    spec = run_spec("method=dpo", "peft=qlora")
    prep = runner.prepare(spec)
    model = runner.load_model(prep.model_path, spec, "causal_lm", prep.tokenizer.pad_token_id)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    before = [(m.weight.data.clone(), m.weight.quant_state.absmax.clone()) for m in layers]
    assert isolation_probe(model, "position_ids")
    compute_reference_logps(model, prep.train_examples[:8], ("chosen", "rejected"), prep.tokenizer.pad_token_id, 4,
                            None, torch.device("cpu"))
    for m, (w, absmax) in zip(layers, before):
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        assert torch.equal(m.weight.data, w) and torch.equal(m.weight.quant_state.absmax, absmax)
    assert model.training  # modes restored


def test_explicit_mask_is_not_used_past_a_sliding_window(monkeypatch):
    """Mode "mask" (an explicit block mask, no window) must not pack sequences longer than a
    sliding-window model's window: they run padded, exactly."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                                             max_position_embeddings=256, attn_implementation="eager"))
    monkeypatch.setattr(forward, "packing_mode", lambda m: "mask")
    batch = collate(examples_for("sft", seed=3, n=8), 0, ("completion",))
    assert forward._packed_rows(model, batch, "on") is None
    got = forward_segments(model, batch, "causal_lm", options=ForwardOptions("chunked", "on"))
    want = forward_segments(model, batch, "causal_lm", options=ForwardOptions("plain", "off"))
    assert err(got["completion"].logps, want["completion"].logps) < TOL


def test_chunked_head_follows_the_autocast_of_a_prepared_model():
    """accelerate's bf16 wrapper runs the model's forward under autocast and hands back fp32
    outputs; the chunked head runs after that forward, outside the autocast, yet must multiply in
    bf16 as the plain head inside it does -- else training (prepared model) and the reference pass
    (explicit autocast) round the reference differently and the training step's head costs fp32."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    model = Accelerator(mixed_precision="bf16", cpu=True).prepare(tiny_llama())
    AcceleratorState._reset_state(reset_partial_state=True)
    batch = collate(examples_for("dpo", seed=6), 0, ("chosen", "rejected"))
    with torch.no_grad():
        got = forward_segments(model, batch, "causal_lm", options=ForwardOptions("chunked", "off"))
        want = forward_segments(model, batch, "causal_lm", options=ForwardOptions("plain", "off"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = forward_segments(model, batch, "causal_lm", options=ForwardOptions("chunked", "off"))
    for s in ("chosen", "rejected"):
        assert err(got[s].logps, want[s].logps) < 1e-5
        assert err(got[s].logps, ref[s].logps) < 1e-5


# --------------------------------------------------------------------------- shared prompts


def grouped_examples(seed: int = 0, prompts: int = 3, group: int = 8) -> list[dict]:
    """An online rollout's shape: ``group`` samples of each prompt (prompts of 1 to 12 tokens,
    samples of 1 to 40), shuffled as a training minibatch is."""
    g = random.Random(seed)
    tok = lambda k: [g.randrange(1, VOCAB) for _ in range(k)]  # noqa: E731
    out = []
    for _ in range(prompts):
        prompt = tok(g.choice([1, 5, 12]))
        for _ in range(group):
            out.append({"segments": {"completion": {"input_ids": prompt + tok(g.choice([1, 3, 17, 40])),
                                                    "prompt_len": len(prompt)}}})
    g.shuffle(out)
    for i, ex in enumerate(out):
        ex["idx"] = i
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompts_give_the_padded_token_logps_and_gradients(attn):
    """A GRPO minibatch with its prompts computed once per unit: the same per-token log-probs, GRPO
    loss and gradients as the padded plain forward, with and without packing (and auto)."""
    adapter = METHODS.get("grpo")
    hp = adapter.config_cls(iterations=2)  # so the objective reads the old log-probs too
    model = tiny_llama(attn=attn)
    examples = grouped_examples()
    batch = collate(examples, 0, ("completion",))
    n = len(examples)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        base = forward_segments(model, batch, "causal_lm", tokens=True, options=ForwardOptions("plain", "off", "off"))
    seq = base["completion"]
    given = {"advantages": torch.randn(n, generator=g),
             "old_logps": (seq.token_logps + 0.05 * torch.randn(seq.token_logps.shape, generator=g)) * seq.token_mask,
             "ref_logps": (seq.token_logps + 0.1 * torch.randn(seq.token_logps.shape, generator=g)) * seq.token_mask}
    norm = Normalizer(sequences=n, tokens={"completion": batch.n_tokens("completion")})
    params = [model.model.embed_tokens.weight, model.model.layers[0].self_attn.q_proj.weight,
              model.model.layers[1].mlp.down_proj.weight]

    def run(options):
        model.zero_grad(set_to_none=True)
        out = forward_segments(model, batch, "causal_lm", tokens=True, options=options)
        loss = adapter.objective(hp, out, given, norm).loss
        loss.backward()
        return out["completion"], loss.detach(), [p.grad.detach().clone() for p in params]

    want, want_loss, want_g = run(ForwardOptions("plain", "off", "off"))
    for opts in (ForwardOptions("chunked", "off", "on"), ForwardOptions("chunked", "on", "on"), ForwardOptions()):
        got, loss, grads = run(opts)
        assert torch.equal(got.token_mask, want.token_mask)
        assert err(got.token_logps, want.token_logps) < TOL, opts
        assert err(got.logps, want.logps) < TOL, opts
        assert err(loss, want_loss) < TOL, opts
        for a, b in zip(grads, want_g):
            assert err(a, b) < TOL, opts


def test_shared_rows_compute_each_prompt_once_and_split_wide_groups():
    """The layout: a group of 8 samples is one unit (its prompt once) in rows of fewer token slots
    than the padded batch; a width too narrow for a whole group splits it into several units, each
    with its own copy of the prompt, and the log-probs stay exact."""
    from harness.modeling.packing import share_prompts, shared_token_logps

    model = tiny_llama()
    examples = grouped_examples(seed=1)
    batch = collate(examples, 0, ("completion",))
    B, T = batch.input_ids.shape
    with torch.no_grad():
        want = forward.per_position_logps(model, batch, ForwardOptions("plain", "off", "off"))
        for width, units in ((4 * T, 3), (T, None)):
            rows = share_prompts(batch.input_ids, batch.attention_mask, batch.loss_mask, width=width)
            assert rows is not None and rows.packed_slots < rows.padded_slots
            assert rows.input_ids.shape[1] <= width
            n_units = len(set(rows.unit[rows.branch >= 0].tolist()))
            assert n_units == units if units else n_units > 3
            # every row of the batch appears, each completion token once
            assert sorted(set(rows.branch[rows.branch >= 0].tolist())) == list(range(B))
            assert int((rows.branch >= 0).sum()) == int(batch.loss_mask.sum())
            got = shared_token_logps(model, rows)
            assert err(got, want) < TOL


def test_share_prompts_declines_what_it_cannot_share():
    from harness.modeling.packing import share_prompts

    unique = collate(examples_for("sft", seed=3, n=8), 0, ("completion",))
    assert share_prompts(unique.input_ids, unique.attention_mask, unique.loss_mask) is None  # no prompt repeats
    batch = collate(grouped_examples(), 0, ("completion",))
    holes = batch.loss_mask.clone()
    row = int(batch.attention_mask.sum(1).argmax())
    holes[row, int(batch.attention_mask[row].sum()) - 2] = 0  # a completion that is not one suffix
    assert share_prompts(batch.input_ids, batch.attention_mask, holes) is None
    left = batch.attention_mask.flip(1)  # left padding
    assert share_prompts(batch.input_ids, left, batch.loss_mask) is None
    assert forward._shared_rows(tiny_llama(), batch, ForwardOptions(share_prompts="off"), "chunked") is None
    assert forward._shared_rows(tiny_llama(), batch, ForwardOptions(), "plain") is None


def test_auto_sharing_leaves_pairs_with_long_answers_alone():
    """A DPO batch of long answers to short prompts saves under 20% by sharing: auto leaves it to
    packing/padding (no change there); a GRPO-shaped batch is shared (on a model wide enough for a
    group to fit one row: rows are at most 1.5 hidden sizes wide, and tiny_llama's is 32)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, max_position_embeddings=256))
    g = random.Random(0)
    pairs = []
    for i in range(8):
        prompt = [g.randrange(1, VOCAB) for _ in range(4)]
        pairs.append({"idx": i, "segments": {s: {"input_ids": prompt + [g.randrange(1, VOCAB) for _ in range(60)],
                                                 "prompt_len": 4} for s in ("chosen", "rejected")}})
    dpo = collate(pairs, 0, ("chosen", "rejected"))
    assert forward._shared_rows(model, dpo, ForwardOptions(), "chunked") is None
    assert forward._shared_rows(model, dpo, ForwardOptions(share_prompts="on"), "chunked") is not None
    grpo = collate(grouped_examples(), 0, ("completion",))
    assert forward._shared_rows(model, grpo, ForwardOptions(), "chunked") is not None


def test_shared_prompts_are_not_used_past_a_sliding_window(monkeypatch):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                                             max_position_embeddings=256, attn_implementation="eager"))
    batch = collate(grouped_examples(seed=2), 0, ("completion",))
    assert forward._shared_rows(model, batch, ForwardOptions(share_prompts="on"), "chunked") is None
    got = forward_segments(model, batch, "causal_lm", options=ForwardOptions("chunked", "off", "on"))
    want = forward_segments(model, batch, "causal_lm", options=ForwardOptions("plain", "off", "off"))
    assert err(got["completion"].logps, want["completion"].logps) < TOL
