"""Generation engine (harness.modeling.generation) on the toy world's real tiny SFT base.

    .venv/bin/pytest tests/test_generation.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.modeling.generation import (
    Completion,
    SamplingParams,
    as_messages,
    completion_logprobs,
    engine_unsupported_reason,
    generate,
    generate_batches,
    is_adapter_dir,
    load_causal_lm,
    resolve_model_dir,
)
from harness.worlds.base import get_world


@pytest.fixture(scope="module")
def tiny(tiny_base):
    model, tok = load_causal_lm("toy:tiny", device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def prompts():
    return get_world("toy").eval_prompts()[:6]


def test_same_seed_same_samples_and_caller_rng_untouched(tiny, prompts):
    model, tok = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=16, num_return_sequences=2, seed=11)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate(model, tok, prompts, params, batch_size=4)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate(model, tok, prompts, params, batch_size=4)
    c = generate(model, tok, prompts, SamplingParams(temperature=1.0, max_new_tokens=16, num_return_sequences=2, seed=12),
                 batch_size=4)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.text for x in a] != [x.text for x in c]
    assert len(a) == 2 * len(prompts)
    assert [(x.prompt_index, x.sample_index) for x in a] == [(i, s) for i in range(len(prompts)) for s in range(2)]
    for x in a:
        assert x.n_tokens == len(x.token_ids) <= 16
        assert x.finish_reason in ("eos", "length")
        if x.finish_reason == "eos":
            assert x.token_ids[-1] == tok.eos_token_id
        assert "<|" not in x.text  # special tokens are not part of the text


def test_left_padded_batch_equals_one_prompt_at_a_time(tiny):
    model, tok = tiny
    # prompts of different token lengths, so the batch really is padded
    prompts = ["How was the bike?", "Write a short review of the museum.", "Tell me about the train."]
    lens = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lens) > 1
    greedy = SamplingParams(temperature=0.0, max_new_tokens=20)
    batched = generate(model, tok, prompts, greedy, batch_size=3)
    single = [generate(model, tok, [p], greedy)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    # the SFT base learned the task: greedy answers end with EOS and name the subject asked about
    assert sum(c.finish_reason == "eos" for c in batched) >= 2
    assert sum(p.split()[-1].rstrip(".?") in c.text for p, c in zip(prompts, batched)) >= 2


def test_stop_strings_cut_text_and_tokens(tiny, prompts):
    model, tok = tiny
    full = generate(model, tok, prompts, SamplingParams(temperature=0.0, max_new_tokens=24))
    cut = generate(model, tok, prompts, SamplingParams(temperature=0.0, max_new_tokens=24, stop=(" was", " is")))
    stopped = [(f, c) for f, c in zip(full, cut) if " was" in f.text or " is" in f.text]
    assert stopped, "the greedy answers should contain 'was'/'is'"
    for f, c in stopped:
        assert c.finish_reason == "stop"
        assert " was" not in c.text and " is" not in c.text
        assert f.text.startswith(c.text)
        # the kept tokens are the sampled prefix up to the token completing the stop string
        assert c.token_ids == f.token_ids[: len(c.token_ids)]
        assert any(s in tok.decode(c.token_ids) for s in (" was", " is"))
        assert not any(s in tok.decode(c.token_ids[:-1]) for s in (" was", " is"))


def test_completion_logprobs_equal_the_sampling_distribution(tiny, prompts):
    """The scores used for KL are the model's own log-probabilities of the sampled tokens."""
    model, tok = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=3)
    samples = generate(model, tok, prompts[:1], params)
    c = samples[0]
    # reference: one forward per token on the growing, unpadded sequence
    ref = 0.0
    seq = list(c.prompt_ids)
    for t in c.token_ids:
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        ref += torch.log_softmax(logits.float(), -1)[t].item()
        seq.append(t)
    got = completion_logprobs(model, samples, tok.pad_token_id)
    assert got.shape == (1,)
    assert got[0].item() == pytest.approx(ref, abs=1e-4)
    # batching with padding gives the same numbers
    many = generate(model, tok, prompts, SamplingParams(temperature=1.0, max_new_tokens=12, seed=4))
    one_by_one = torch.cat([completion_logprobs(model, [m], tok.pad_token_id) for m in many])
    assert torch.allclose(completion_logprobs(model, many, tok.pad_token_id, batch_size=4), one_by_one, atol=1e-4)


ENGINE_PARAMS = [
    SamplingParams(temperature=1.0, max_new_tokens=24, num_return_sequences=4),
    SamplingParams(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=16, num_return_sequences=3),
    SamplingParams(temperature=0.0, max_new_tokens=20),
]


@pytest.mark.parametrize("params", ENGINE_PARAMS, ids=["t1", "t0.7-top_p-top_k", "greedy"])
def test_batched_engine_samples_what_generate_samples_per_batch(tiny, params):
    """generate_batches decodes several seeded batches at once (prompts prefilled once for their
    samples, finished rows dropped) and must give each batch what generate gives it alone: the
    same draws from the same per-batch seed, so the same tokens, texts and finish reasons."""
    from dataclasses import replace

    model, tok = tiny
    assert engine_unsupported_reason(model, tok, params) is None
    pool = get_world("toy").eval_prompts()
    batches = [(pool[0:5], 7), (pool[5:8], 8), (pool[8:14], 9)]  # prompts of several lengths, uneven batches
    fast = generate_batches(model, tok, batches, params, logprobs=True)
    hf = generate_batches(model, tok, batches, params, engine="hf")
    assert len(fast) == len(batches)
    for (ps, seed), got, via_hf in zip(batches, fast, hf):
        want = generate(model, tok, ps, replace(params, seed=seed), batch_size=len(ps))
        assert [(c.prompt_index, c.sample_index) for c in got] == [(c.prompt_index, c.sample_index) for c in want]
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert [c.text for c in got] == [c.text for c in want]
        assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
        assert [c.prompt_ids for c in got] == [c.prompt_ids for c in want]
        assert [c.token_ids for c in via_hf] == [c.token_ids for c in want] and all(c.logprobs is None for c in via_hf)
    # a batch's samples do not depend on the batches decoded with it
    alone = generate_batches(model, tok, batches[1:2], params)[0]
    assert [c.token_ids for c in alone] == [c.token_ids for c in fast[1]]


def test_batched_engine_log_probs_are_the_models_own(tiny):
    """Completion.logprobs (read while sampling at any temperature) are the model's temperature-1
    log-probs of the sampled tokens: a forward over the finished sequences gives them to 1e-5."""
    from harness.data.batching import collate
    from harness.modeling.forward import ForwardOptions, forward_segments

    model, tok = tiny
    pool = get_world("toy").eval_prompts()
    for params in ENGINE_PARAMS[:2]:
        comps = [c for b in generate_batches(model, tok, [(pool[:4], 1), (pool[4:9], 2)], params, logprobs=True)
                 for c in b]
        batch = collate([{"idx": i, "segments": {"completion": {"input_ids": c.prompt_ids + c.token_ids,
                                                                "prompt_len": len(c.prompt_ids)}}}
                         for i, c in enumerate(comps)], tok.pad_token_id, ("completion",))
        with torch.no_grad():
            seq = forward_segments(model, batch, "causal_lm", tokens=True,
                                   options=ForwardOptions("plain", "off", "off"))["completion"]
        for i, c in enumerate(comps):
            assert len(c.logprobs) == c.n_tokens
            assert torch.allclose(torch.tensor(c.logprobs), seq.token_logps[i, :c.n_tokens], atol=1e-5)


def test_batched_engine_hands_what_it_cannot_reproduce_to_generate(tiny, prompts):
    model, tok = tiny
    stop = SamplingParams(temperature=0.0, max_new_tokens=24, stop=(" was",))
    assert "stop strings" in engine_unsupported_reason(model, tok, stop)
    got = generate_batches(model, tok, [(prompts, 0)], stop, logprobs=True)[0]
    assert [c.text for c in got] == [c.text for c in generate(model, tok, prompts, stop, batch_size=len(prompts))]
    assert all(c.logprobs is None for c in got)
    before = model.generation_config.repetition_penalty
    model.generation_config.repetition_penalty = 1.3  # a processor the engine does not apply itself
    try:
        assert "RepetitionPenaltyLogitsProcessor" in engine_unsupported_reason(model, tok, SamplingParams())
    finally:
        model.generation_config.repetition_penalty = before
    with pytest.raises(ValueError, match="engine"):
        generate_batches(model, tok, [(prompts, 0)], engine="vllm")  # type: ignore[arg-type]


def test_load_run_dir_and_peft_adapter(tiny, tmp_path, prompts):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    base_dir = resolve_model_dir("toy:tiny")
    # a run directory resolves to its final/ weights
    run = tmp_path / "runs" / "sft-0001"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: sft}\n")
    for f in Path(base_dir).iterdir():
        if f.is_file():
            (run / "final" / f.name).write_bytes(f.read_bytes())
    assert resolve_model_dir(run) == str(run / "final")
    # a LoRA adapter with non-zero weights, saved without a tokenizer: loads on its base
    base, _ = load_causal_lm(base_dir, device="cpu")
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)
    assert is_adapter_dir(adapter_dir)
    peft_model, peft_tok = load_causal_lm(adapter_dir, device="cpu")
    merged, _ = load_causal_lm(adapter_dir, merge=True, device="cpu")
    assert type(peft_model).__name__ == "PeftModelForCausalLM"
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert peft_tok.get_vocab() == tok.get_vocab()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    a = generate(peft_model, peft_tok, prompts, greedy)
    b = generate(merged, peft_tok, prompts, greedy)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    # the batched engine runs the adapter too (an online LoRA run samples through it)
    sampled = SamplingParams(temperature=1.0, max_new_tokens=16, num_return_sequences=2, seed=5)
    assert engine_unsupported_reason(peft_model, peft_tok, sampled) is None
    assert ([x.token_ids for x in generate_batches(peft_model, peft_tok, [(prompts, 5)], sampled)[0]]
            == [x.token_ids for x in generate(peft_model, peft_tok, prompts, sampled, batch_size=len(prompts))])
    la = completion_logprobs(peft_model, a, tok.pad_token_id)
    lb = completion_logprobs(merged, a, tok.pad_token_id)
    assert torch.allclose(la, lb, atol=1e-3)
    # the adapter really is applied: the base model scores the same tokens differently
    assert (la - completion_logprobs(model, a, tok.pad_token_id)).abs().max() > 0.1


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="greedy"):
        SamplingParams(temperature=0, num_return_sequences=2)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"prompts\[1\]\[0\]"):
        as_messages([{"role": "user"}], "prompts[1]")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_dir("./no/such/model")
    assert Completion(0, 0, "x", [1], [5, 2]).n_tokens == 2
