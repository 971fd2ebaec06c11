"""The chunked label log-prob path is exact against the plain one (full logits +
``harness.modeling.forward.sequence_logps``): values, counts and gradients, fp32, to 1e-5 — relative
to magnitudes above 1 (:func:`err`): a per-row sum of ~150 nats has an fp32 spacing of 1.5e-5,
so an absolute 1e-5 would demand better than one ulp; any real error (a lost chunk, a shifted
label) is whole nats.

Tiny in-memory Llamas (vocab 384, hidden 32, 2 layers); everything runs in a few seconds on CPU.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.modeling.forward import sequence_logps
from harness.modeling.logprobs import (
    ChunkedLabelLogprob,
    chunked_unsupported_reason,
    completion_token_logps,
    label_logprobs,
    resolve_path,
    supports_chunked,
)

VOCAB = 384
TOL = 1e-5


def tiny_llama(tied: bool = True, attn: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tied, attn_implementation=attn)
    return LlamaForCausalLM(cfg)


def padded_batch(seed: int = 1, lengths=(23, 17, 9, 4, 31), prompts=(5, 8, 3, 4, 6)):
    """Right-padded rows as ``collate`` makes them: 58 completion positions, row 3 all prompt
    (no completion tokens), the earliest completion at 3 so ``logits_to_keep`` < T is used."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    attn = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for r, (n, p) in enumerate(zip(lengths, prompts)):
        ids[r, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        attn[r, :n] = 1
        loss[r, p:n] = 1
    return ids, attn, loss


def plain(model, ids, attn, loss):
    out = model(input_ids=ids, attention_mask=attn, use_cache=False)
    return sequence_logps(out.logits, ids, loss)


def grads(values: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    # random weights per row so a gradient that is right only in sum cannot pass
    coef = torch.linspace(0.5, 1.5, values.shape[0])
    return list(torch.autograd.grad((values * coef).sum(), params, allow_unused=True))


def err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs difference, relative where |want| > 1 (fp32 rounding scales with magnitude)."""
    got, want = got.detach(), want.detach()
    return float(((got - want).abs() / want.abs().clamp(min=1)).max())


def max_diff(a, b) -> float:
    return max(err(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- the autograd function


@pytest.mark.parametrize("chunk_rows,chunk_vocab", [(7, 70), (16, 50), (64, None), (42, 1)])
def test_function_matches_log_softmax(chunk_rows, chunk_vocab):
    """Row chunks that divide N=42 (7, 42), do not (16) or exceed it (64); vocabulary chunks
    smaller than V=300 that leave a ragged last block (70) or not (50, 1), the whole V; a bias."""
    torch.manual_seed(0)
    N, H, V = 42, 16, 300
    h = torch.randn(N, H, requires_grad=True)
    W = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True)
    y = torch.randint(0, V, (N,))
    got = label_logprobs(h, W, y, b, chunk_rows=chunk_rows, chunk_vocab=chunk_vocab)
    want = torch.log_softmax(h @ W.T + b, dim=-1).gather(1, y[:, None]).squeeze(1)
    assert err(got, want) < TOL
    assert max_diff(grads(got, [h, W, b]), grads(want, [h, W, b])) < TOL


def test_function_computes_in_fp32_for_bf16_inputs_and_under_autocast():
    torch.manual_seed(0)
    h = torch.randn(20, 16).bfloat16().requires_grad_()
    W = torch.randn(100, 16).bfloat16().requires_grad_()
    y = torch.randint(0, 100, (20,))
    got = label_logprobs(h, W, y, chunk_rows=8, chunk_vocab=30)
    assert got.dtype == torch.float32
    want = torch.log_softmax(h.float() @ W.float().T, dim=-1).gather(1, y[:, None]).squeeze(1)
    assert err(got, want) < TOL  # fp32 arithmetic on the bf16 values
    gh, gw = grads(got, [h, W])
    assert gh.dtype == gw.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = label_logprobs(h, W, y, chunk_rows=8, chunk_vocab=30)
    assert torch.equal(under, got)  # autocast would have made the block matmuls bf16


def test_frozen_weight_gets_no_gradient_and_masked_rows_are_exact_zeros():
    torch.manual_seed(0)
    h = torch.randn(12, 8, requires_grad=True)
    W = torch.randn(40, 8)  # a frozen (LoRA) head
    y = torch.randint(0, 40, (12,))
    mask = torch.tensor([True, False] * 6)
    got = label_logprobs(h, W, y, mask=mask, chunk_rows=5, chunk_vocab=16)
    assert torch.equal(got[~mask], torch.zeros(6))
    want = torch.log_softmax(h @ W.T, dim=-1).gather(1, y[:, None]).squeeze(1) * mask
    assert err(got, want) < TOL
    (gh,) = grads(got, [h])
    assert torch.equal(gh[~mask], torch.zeros(6, 8))
    assert max_diff([gh], grads(want, [h])) < TOL
    # the raw Function skips the weight gradient entirely when the weight is frozen
    out = ChunkedLabelLogprob.apply(h, W, None, y, 4, 16)
    out.sum().backward()
    assert W.grad is None and h.grad is not None


# --------------------------------------------------------------------------- model level


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk_rows,chunk_vocab", [(29, 100), (10, 128), (1024, None)])
def test_model_matches_plain_path(tied, chunk_rows, chunk_vocab):
    """Right padding, a row without completion tokens; row chunks that divide N = 58 or not, a
    vocabulary chunk that divides V = 384 or not; gradients to the (tied) embedding / lm_head,
    an attention weight and the final norm."""
    model = tiny_llama(tied=tied)
    ids, attn, loss = padded_batch()
    assert resolve_path(model) == "chunked" and supports_chunked(model)
    params = [model.model.embed_tokens.weight, model.model.layers[0].self_attn.q_proj.weight, model.model.norm.weight]
    if not tied:
        params.append(model.lm_head.weight)
    got, got_n = completion_token_logps(model, ids, attn, loss, chunk_rows=chunk_rows, chunk_vocab=chunk_vocab)
    want, want_n = plain(model, ids, attn, loss)
    assert torch.equal(got_n, want_n) and got_n[3] == 0 and got[3] == 0
    assert err(got, want) < TOL
    assert max_diff(grads(got, params), grads(want, params)) < TOL


def test_position_ids_are_passed_through():
    model = tiny_llama()
    ids, attn, loss = padded_batch()
    pos = torch.arange(ids.shape[1]).flip(0).unsqueeze(0)  # RoPE ignores a constant shift, not this
    got, _ = completion_token_logps(model, ids, attn, loss, position_ids=pos)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
    want, _ = sequence_logps(out.logits, ids, loss)
    assert err(got, want) < TOL
    # the positions mattered (3.6e-3 here; rounding noise is ~1e-5): they were not dropped
    assert float((got - plain(model, ids, attn, loss)[0]).detach().abs().max()) > 1e-4


def test_lora_model_takes_chunked_path_and_is_exact():
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: B != 0, so both LoRA matrices get non-trivial gradients
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    assert resolve_path(model) == "chunked"
    ids, attn, loss = padded_batch()
    lora = [p for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_" in n]
    assert len(lora) == 2
    got, got_n = completion_token_logps(model, ids, attn, loss, chunk_rows=9, chunk_vocab=100)
    want, want_n = plain(model, ids, attn, loss)
    assert torch.equal(got_n, want_n)
    assert err(got, want) < TOL
    assert max_diff(grads(got, lora), grads(want, lora)) < TOL
    head = model.get_base_model().lm_head
    assert "forward" not in head.__dict__  # the bypass is undone


def test_prefix_tuning_is_exact():
    """PeftModel.forward injects the prefix as past key values before the decoder: the chunked
    path runs through that same forward (only the head is bypassed), so it stays exact."""
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(tiny_llama(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    ids, attn, loss = padded_batch()
    prefix = [p for p in model.parameters() if p.requires_grad]
    got, got_n = completion_token_logps(model, ids, attn, loss, chunk_rows=9, chunk_vocab=100)
    want, want_n = plain(model, ids, attn, loss)
    assert resolve_path(model) == "chunked"
    assert torch.equal(got_n, want_n)
    assert err(got, want) < TOL
    assert max_diff(grads(got, prefix), grads(want, prefix)) < TOL
    forced, _ = completion_token_logps(model, ids, attn, loss, path="plain")
    assert err(forced, want) < TOL


def _gemma2_softcapped():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          final_logit_softcapping=5.0, attn_implementation="eager"))


def _lora_on_head():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_llama(tied=False), LoraConfig(r=4, target_modules=["lm_head", "q_proj"], init_lora_weights=False))


@pytest.mark.parametrize("make,why", [(_gemma2_softcapped, "soft-caps"), (_lora_on_head, "not a plain nn.Linear")])
def test_unsupported_heads_fall_back_exactly(make, why):
    model = make()
    reason = chunked_unsupported_reason(model)
    assert reason is not None and why in reason
    assert resolve_path(model) == "plain"
    with pytest.raises(ValueError, match="not exact"):
        resolve_path(model, "chunked")
    ids, attn, loss = padded_batch()
    params = [p for p in model.parameters() if p.requires_grad][:3]
    got, got_n = completion_token_logps(model, ids, attn, loss)
    want, want_n = plain(model, ids, attn, loss)
    assert torch.equal(got_n, want_n)
    assert err(got, want) < TOL
    assert max_diff(grads(got, params), grads(want, params)) < TOL


def test_bf16_autocast_is_close():
    """Under bf16 autocast the chunked head multiplies in bf16 like the plain head (softmax and
    accumulation stay fp32), so the two agree to float rounding of the sums (measured: identical),
    and both sit within 2e-4 relative of the fp32 reference (measured 8e-5 on a 147-nat row);
    gradients within 2% of the largest entry (measured 0.3-0.5%, plain autocast 0.4-0.7%)."""
    model = tiny_llama(tied=False)
    ids, attn, loss = padded_batch()
    params = [model.lm_head.weight, model.model.layers[0].self_attn.q_proj.weight]
    ref, _ = plain(model, ids, attn, loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = completion_token_logps(model, ids, attn, loss, chunk_rows=9, chunk_vocab=100)
        base, _ = plain(model, ids, attn, loss)
    assert got.dtype == torch.float32
    assert err(got, base) < 1e-5  # the same bf16 logits as the plain head, not fp32 ones
    assert err(got, ref) < 2e-4
    assert err(got, ref) > 0  # the decoder did run in bf16: autocast reached it through the forward
    for g, r in zip(grads(got, params), grads(ref, params)):
        assert float((g - r).abs().max()) < 0.02 * float(r.abs().max())


def test_no_completion_tokens_anywhere():
    model = tiny_llama()
    ids, attn, loss = padded_batch()
    loss.zero_()
    got, n = completion_token_logps(model, ids, attn, loss)
    assert torch.equal(got, torch.zeros(5)) and torch.equal(n, torch.zeros(5))
    (g,) = grads(got, [model.model.norm.weight])  # still differentiable: the core's loss may be 0 * ...
    assert g is None or torch.equal(g, torch.zeros_like(g))


def test_head_forward_restored_after_an_error():
    model = tiny_llama()
    ids, attn, loss = padded_batch()
    with pytest.raises(IndexError):
        completion_token_logps(model, ids + VOCAB, attn, loss)  # out-of-range token ids
    assert "forward" not in model.lm_head.__dict__
    assert model(input_ids=ids[:1, :3]).logits.shape[-1] == VOCAB
