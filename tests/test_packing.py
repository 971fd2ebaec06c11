"""Packed (padding-free) micro-batches give the padded path's per-sequence log-prob sums,
token counts and gradients (fp32, 1e-5 relative above magnitude 1), keep attention inside each
sequence, and the planner respects its budget.

The padded reference is the training core's own ``harness.modeling.forward.forward_segments`` on a
``harness.data.batching.collate`` batch of chosen/rejected pairs of very different lengths.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.data.batching import collate
from harness.modeling.forward import forward_segments
from harness.modeling.packing import (
    block_causal_mask,
    isolation_probe,
    pack_padded,
    pack_sequences,
    packed_forward_logps,
    packing_mode,
    plan_packs,
    unpack,
)

VOCAB = 384
TOL = 1e-5
SEGS = ("chosen", "rejected")


def tiny_llama(attn: str = "sdpa", seed: int = 0, tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, attn_implementation=attn)
    return LlamaForCausalLM(cfg)


def pair_examples(seed: int = 0):
    """Three preference pairs, sequences from 3 to 78 tokens; pair 1's rejected reply is the
    EOS only (a single completion token); pair 2's prompt is one token, so its first label sits
    right after a sequence start."""
    g = random.Random(seed)
    tok = lambda n: [g.randrange(1, VOCAB) for _ in range(n)]  # noqa: E731
    shapes = [(3, 70, 9), (40, 12, 1), (1, 2, 77)]  # (prompt, chosen reply, rejected reply)
    out = []
    for i, (p, c, r) in enumerate(shapes):
        prompt = tok(p)
        out.append({"idx": i, "segments": {"chosen": {"input_ids": prompt + tok(c), "prompt_len": p},
                                            "rejected": {"input_ids": prompt + tok(r), "prompt_len": p}}})
    return out


def err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach(), want.detach()
    return float(((got - want).abs() / want.abs().clamp(min=1)).max())


def grads(values: torch.Tensor, params):
    coef = torch.linspace(0.5, 1.5, values.shape[0])
    return torch.autograd.grad((values * coef).sum(), params)


def padded_reference(model, examples):
    batch = collate(examples, 0, SEGS)
    res = forward_segments(model, batch, "causal_lm")
    return batch, torch.cat([res[s].logps for s in SEGS]), torch.cat([res[s].n_tokens.float() for s in SEGS])


# --------------------------------------------------------------------------- layout


def test_pack_layout_positions_labels_and_boundaries():
    p = pack_sequences([{"input_ids": [5, 6, 7], "prompt_len": 1},
                        {"input_ids": [8, 9], "prompt_len": 0},
                        {"input_ids": [10, 11, 12, 13], "prompt_len": 2}])
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert p.seq_ids.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    # a sequence start is never a label: the token before it belongs to another sequence
    assert p.loss_mask.tolist() == [[0, 1, 1, 0, 1, 0, 0, 1, 1]]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 9] and p.cu_seqlens.dtype == torch.int32
    assert p.max_seqlen == 4 and p.num_sequences == 3
    ids, attn, loss = unpack(p)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0], [10, 11, 12, 13]]
    assert attn.sum(1).tolist() == [3, 2, 4]
    assert pack_padded(ids, attn, loss).input_ids.tolist() == p.input_ids.tolist()
    with pytest.raises(ValueError, match="empty"):
        pack_sequences([{"input_ids": [], "prompt_len": 0}])


def test_block_causal_mask():
    seq = torch.tensor([[0, 0, 1, 1, 1]])
    m = block_causal_mask(seq)
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.bool
    assert m[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    add = block_causal_mask(seq, torch.bfloat16)
    assert add.dtype == torch.bfloat16
    assert torch.equal(add == 0, m) and float(add.min()) == torch.finfo(torch.bfloat16).min


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["position_ids", "mask"])
@pytest.mark.parametrize("path", ["chunked", "plain"])
def test_packed_matches_padded(attn, mode, path):
    model = tiny_llama(attn)
    examples = pair_examples()
    batch, want, want_n = padded_reference(model, examples)
    packed = pack_padded(batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert packed.input_ids.shape[1] == int(batch.attention_mask.sum()) < 0.6 * batch.input_ids.numel()
    got, got_n = packed_forward_logps(model, packed, mode=mode, path=path, chunk_rows=16, chunk_vocab=100)
    assert torch.equal(got_n, want_n)
    assert err(got, want) < TOL
    params = [model.model.embed_tokens.weight, model.model.layers[0].self_attn.k_proj.weight,
              model.model.layers[1].mlp.up_proj.weight]
    for g, w in zip(grads(got, params), grads(want, params)):
        assert err(g, w) < TOL


def test_auto_mode_is_native_for_llama_and_results_follow_a_plan():
    """``auto`` picks transformers' own packed-sequence masking for Llama (sdpa, eager), and
    packs from ``plan_packs`` map back to the original sequence order."""
    for attn in ("sdpa", "eager"):
        assert packing_mode(tiny_llama(attn)) == "position_ids"
    model = tiny_llama()
    examples = pair_examples(seed=3)
    _, want, want_n = padded_reference(model, examples)
    seqs = [ex["segments"][s] for s in SEGS for ex in examples]  # the padded rows' order
    plan = plan_packs([len(s["input_ids"]) for s in seqs], max_tokens=100)
    assert len(plan) > 1
    got = torch.zeros(len(seqs))
    got_n = torch.zeros(len(seqs))
    for pack in plan:
        lp, n = packed_forward_logps(model, pack_sequences([seqs[i] for i in pack]))
        got[pack], got_n[pack] = lp, n
    assert torch.equal(got_n, want_n) and err(got, want) < TOL


@pytest.mark.parametrize("mode", ["position_ids", "mask"])
def test_no_cross_sequence_attention(mode):
    """Changing sequence 1's tokens moves sequence 1's log-prob and nothing else."""
    model = tiny_llama()
    seqs = [ex["segments"][s] for s in SEGS for ex in pair_examples()]
    before, _ = packed_forward_logps(model, pack_sequences(seqs), mode=mode)
    changed = [dict(s) for s in seqs]
    changed[1] = {"input_ids": [(t * 5 + 1) % VOCAB for t in seqs[1]["input_ids"]], "prompt_len": seqs[1]["prompt_len"]}
    after, _ = packed_forward_logps(model, pack_sequences(changed), mode=mode)
    others = [i for i in range(len(seqs)) if i != 1]
    assert float((after[others] - before[others]).detach().abs().max()) < 1e-6
    assert float((after[1] - before[1]).detach().abs()) > 1e-2


def test_probe_catches_a_leaking_mechanism(monkeypatch):
    """A model on which position_ids-based packing would leak (simulated by also passing a 2D
    all-ones mask, which turns transformers' packed-sequence detection off) gets the explicit
    block-diagonal mask instead."""
    import harness.modeling.packing as packing

    real = packing._forward_kwargs

    def leaky(model, packed, mode):
        attn, kw = real(model, packed, mode)
        if mode == "position_ids":
            attn = torch.ones_like(packed.input_ids)
        return attn, kw

    monkeypatch.setattr(packing, "_forward_kwargs", leaky)
    model = tiny_llama()
    assert not isolation_probe(model, "position_ids")
    assert isolation_probe(model, "mask")
    assert packing_mode(model) == "mask"


def test_prefix_tuning_falls_back_to_padded_rows_exactly():
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(tiny_llama(), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert packing_mode(model) == "padded"
    examples = pair_examples()
    batch, want, want_n = padded_reference(model, examples)
    got, got_n = packed_forward_logps(model, pack_padded(batch.input_ids, batch.attention_mask, batch.loss_mask))
    assert torch.equal(got_n, want_n) and err(got, want) < TOL


def test_lora_packed_matches_padded():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert packing_mode(model) == "position_ids"
    batch, want, _ = padded_reference(model, pair_examples())
    got, _ = packed_forward_logps(model, pack_padded(batch.input_ids, batch.attention_mask, batch.loss_mask))
    lora = [p for n, p in model.named_parameters() if "lora_" in n][:4]
    assert err(got, want) < TOL
    for g, w in zip(grads(got, lora), grads(want, lora)):
        assert err(g, w) < TOL


def test_varlen_arguments_reach_the_attention_function():
    """Mode "varlen" (flash-attention) cannot run here; a registered reference attention that
    attends per ``cu_seq_lens_q`` segment checks that the arguments arrive and are right."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv

    seen = []

    def per_segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                              cu_seq_lens_q=None, max_length_q=None, **kwargs):
        seen.append((cu_seq_lens_q.tolist(), max_length_q))
        k, v = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
        bounds = cu_seq_lens_q.tolist()
        out = [torch.nn.functional.scaled_dot_product_attention(query[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                                is_causal=True, scale=scaling)
               for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None

    AttentionInterface.register("test_per_segment", per_segment_attention)
    model = tiny_llama()
    batch, want, _ = padded_reference(model, pair_examples())
    model.set_attn_implementation("test_per_segment")
    packed = pack_padded(batch.input_ids, batch.attention_mask, batch.loss_mask)
    got, _ = packed_forward_logps(model, packed, mode="varlen")
    assert seen and seen[0] == (packed.cu_seqlens.tolist(), packed.max_seqlen)
    assert err(got, want) < TOL


# --------------------------------------------------------------------------- planner


def test_plan_packs_budget_and_coverage():
    rng = random.Random(0)
    for _ in range(200):
        budget = rng.choice([16, 100, 2048])
        lengths = [rng.randint(0, budget) for _ in range(rng.randint(0, 40))]
        plan = plan_packs(lengths, budget)
        assert sorted(i for p in plan for i in p) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in p) <= budget for p in plan)
        assert all(p == sorted(p) and p for p in plan)
        assert plan == plan_packs(list(lengths), budget)  # deterministic
        # first fit never leaves two packs that would fit in one, so at most one is half empty
        assert len(plan) <= 2 * sum(lengths) / budget + 1


def test_plan_packs_first_fit_decreasing():
    assert plan_packs([5, 9, 3, 7, 1, 5], 10) == [[1, 4], [2, 3], [0, 5]]
    assert plan_packs([], 8) == []
    with pytest.raises(ValueError, match=r"\[1\]"):
        plan_packs([3, 11], 10)
