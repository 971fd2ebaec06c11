"""Parity of ``harness.core.losses`` with TRL 1.16, the reference implementation we benchmark against.

Tensor level where TRL exposes the loss as a method (CPO / SimPO / reference-free IPO via
``CPOTrainer.cpo_loss``, ORPO via ``ORPOTrainer.odds_ratio_loss``); model level where the
loss is written inline in a trainer (DPO, cDPO and IPO in ``DPOTrainer._compute_loss``, KTO
in ``KTOTrainer._compute_loss``, the Bradley-Terry reward loss in
``RewardTrainer.compute_loss``).  Model-level checks build the real TRL trainer on a tiny
Llama and a byte-level BPE tokenizer trained here, let TRL tokenise and collate a small
batch, call its loss, and compare with our loss computed from
``harness.modeling.forward.sequence_logps`` on the very same token ids and completion masks.
Every TRL convention we have to match is stated next to the check that depends on it.
TRL is a test-only dependency.

    .venv/bin/pytest tests/test_trl_parity.py -q
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("trl")

from datasets import Dataset, disable_progress_bars  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from harness.core.losses import (  # noqa: E402
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_odds_ratio_loss,
    simpo_loss,
)
from harness.modeling.forward import sequence_logps  # noqa: E402

disable_progress_bars()

# TRL 1.16 itself calls a transformers API that transformers 5.24 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

#: parity tolerance asked of every check (float32 end to end)
TOL = 1e-5

#: measured max |ours - TRL| per check, printed at the end of the module (pytest -s)
MEASURED: dict[str, float] = {}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<eos>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

PAIRS = [
    {"prompt": "what is two plus two", "chosen": "four", "rejected": "five, or maybe six"},
    {"prompt": "name a pet", "chosen": "a cat sat on the mat", "rejected": "rock"},
    {"prompt": "spell cat", "chosen": "c a t", "rejected": "k a t t"},
    {"prompt": "say hello", "chosen": "hello there, friend", "rejected": "bye"},
]

UNPAIRED = [
    {"prompt": "what is two plus two", "completion": "four", "label": True},
    {"prompt": "name a pet", "completion": "rock", "label": False},
    {"prompt": "spell cat", "completion": "c a t", "label": True},
    {"prompt": "say hello", "completion": "bye now, see you", "label": False},
]


def record(name: str, diff: float) -> None:
    MEASURED[name] = diff
    assert diff < TOL, f"{name}: |ours - TRL| = {diff:.3g} >= {TOL}"


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for name, diff in MEASURED.items():
        print(f"\n[trl parity] {name}: max abs diff {diff:.3g}", end="")


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (vocab 320) trained on the test texts, with pad/eos and a chat template."""
    corpus = [p["prompt"] + " " + p["chosen"] + " " + p["rejected"] for p in PAIRS]
    corpus += [u["prompt"] + " " + u["completion"] for u in UNPAIRED]
    corpus += ["<|user|>", "<|assistant|>", "the quick brown fox jumps over the lazy dog"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus * 10,
        trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<eos>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def llama_config(tok: PreTrainedTokenizerFast, **kw: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        # a wide init makes per-token log-probs differ by whole nats, so a wrong
        # convention (sum vs mean, dropped token) shows far above the tolerance
        initializer_range=0.3, **kw,
    )


def perturbed(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    """A copy of ``model`` with seeded Gaussian noise on every weight (the 'trained policy')."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


@pytest.fixture(scope="module")
def lm_pair(tokenizer: PreTrainedTokenizerFast) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """(policy, reference): reference at init, policy a perturbed copy so h != 0."""
    torch.manual_seed(0)
    ref = LlamaForCausalLM(llama_config(tokenizer)).eval()
    # seed 3: the KTO batch then has a clearly positive KL estimate (3.5 nats)
    policy = perturbed(ref, seed=3, scale=0.15).eval()
    return policy, ref


def conversational(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> Dataset:
    # TRL's conversational format: the prompt is a user turn, each reply an assistant turn
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if k not in fields and k != "prompt"}
        row["prompt"] = [{"role": "user", "content": r["prompt"]}]
        for f in fields:
            row[f] = [{"role": "assistant", "content": r[f]}]
        out.append(row)
    return Dataset.from_list(out)


def common_args(tmp: Path) -> dict[str, Any]:
    # TRL's defaults differ from ours: pin precision, checkpointing and reporting explicitly
    return {"output_dir": str(tmp), "report_to": [], "bf16": False, "fp16": False, "use_cpu": True,
            "activation_checkpointing": False, "dataset_num_proc": None, "disable_dropout": True}


def collated(trainer: Any, n: int) -> dict[str, Any]:
    """TRL's own collated batch of the first n tokenised rows (no sampler: order is fixed)."""
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def our_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the trainers patch ``forward`` with a fused LM head; called without ``fused_lm_head``
    # it is the plain forward, so this path never touches TRL's log-prob kernel
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return sequence_logps(logits, input_ids, completion_mask)


# --------------------------------------------------------------------------- DPO


def dpo_trainer(policy: torch.nn.Module, ref: torch.nn.Module, tok: Any, tmp: Path, **cfg: Any) -> Any:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common_args(tmp), per_device_train_batch_size=len(PAIRS), precompute_ref_log_probs=False,
                     **cfg)
    return DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                      train_dataset=conversational(PAIRS, ("chosen", "rejected")), processing_class=tok)


def dpo_side_by_side(
    lm_pair: tuple[torch.nn.Module, torch.nn.Module], tok: Any, tmp: Path, n: int, **cfg: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """TRL's loss on its collated batch, and our summed log-probs on the same ids."""
    policy, ref = lm_pair
    trainer = dpo_trainer(policy, ref, tok, tmp, **cfg)
    batch = collated(trainer, n)
    trl_loss = trainer.compute_loss(trainer.model, batch)
    # TRL's DPO batch is [chosen rows; rejected rows] in one tensor
    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        pol, n_tok = our_logps(policy, ids, attn, cmask)
        rf, _ = our_logps(ref, ids, attn, cmask)
    pc, pr = pol.chunk(2)
    rc, rr = rf.chunk(2)
    nc, nr = n_tok.chunk(2)
    return trl_loss, {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "nc": nc, "nr": nr}, trainer


@pytest.mark.parametrize("trl_label_smoothing", [0.0, 0.2])
def test_dpo_sigmoid_matches_trl(lm_pair: Any, tokenizer: Any, tmp_path: Path, trl_label_smoothing: float) -> None:
    # TRL: per-sequence log-probs are *summed* over completion tokens (ld_alpha=None), the
    # loss is -logsigmoid(beta * h) averaged over pairs (``per_sequence_loss.mean()``).
    # TRL 1.16's "sigmoid" ignores label_smoothing, so with it set TRL still computes plain
    # DPO: a TRL run with label_smoothing on "sigmoid" is our dpo_loss(label_smoothing=0)
    beta = 0.1
    trl_loss, s, _ = dpo_side_by_side(lm_pair, tokenizer, tmp_path, len(PAIRS), beta=beta, loss_type=["sigmoid"],
                                      label_smoothing=trl_label_smoothing)
    ours, _, _ = dpo_loss(s["pc"], s["pr"], s["rc"], s["rr"], beta=beta)
    h = (s["pc"] - s["pr"]) - (s["rc"] - s["rr"])
    assert h.abs().min() > 0.5, "policy too close to the reference for a meaningful check"
    assert abs(trl_loss.item() - math.log(2)) > 1e-2
    record(f"DPO sigmoid, TRL ls={trl_label_smoothing} (model level, loss)", abs(ours.mean().item() - trl_loss.item()))


def test_dpo_gradients_match_trl(lm_pair: Any, tokenizer: Any, tmp_path: Path) -> None:
    # same loss, differentiated: TRL through its fused chunked log-prob kernel, ours through
    # full logits + sequence_logps; the parameter gradients must agree too
    policy, ref = lm_pair
    beta = 0.1
    trainer = dpo_trainer(policy, ref, tokenizer, tmp_path, beta=beta, loss_type=["sigmoid"])
    batch = collated(trainer, len(PAIRS))
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, batch).backward()
    ours_model = copy.deepcopy(policy)
    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    pol, _ = our_logps(ours_model, ids, attn, cmask)
    with torch.no_grad():
        rf, _ = our_logps(ref, ids, attn, cmask)
    pc, pr = pol.chunk(2)
    rc, rr = rf.chunk(2)
    dpo_loss(pc, pr, rc, rr, beta=beta)[0].mean().backward()
    theirs = dict(trainer.model.named_parameters())
    diff = max((p.grad - theirs[name].grad).abs().max().item() for name, p in ours_model.named_parameters())
    assert max(p.grad.abs().max().item() for p in ours_model.parameters()) > 1e-3
    record("DPO sigmoid (model level, parameter gradients)", diff)


def test_cdpo_matches_trl_aot_on_one_pair(lm_pair: Any, tokenizer: Any, tmp_path: Path) -> None:
    # TRL 1.16's "sigmoid" ignores label_smoothing (it only feeds "robust", "exo_pair" and
    # the "aot" family).  "aot" sorts the policy and reference log-ratio margins across the
    # batch and then applies exactly the cDPO formula; with one pair the sort is the
    # identity, so TRL "aot" on a single pair *is* cDPO
    beta, eps = 0.5, 0.2
    trl_loss, s, _ = dpo_side_by_side(lm_pair, tokenizer, tmp_path, 1, beta=beta, loss_type=["aot"],
                                      label_smoothing=eps)
    ours, _, _ = dpo_loss(s["pc"], s["pr"], s["rc"], s["rr"], beta=beta, label_smoothing=eps)
    plain, _, _ = dpo_loss(s["pc"], s["pr"], s["rc"], s["rr"], beta=beta)
    assert abs(ours.item() - plain.item()) > 1e-2, "smoothing must change the loss for the check to mean anything"
    record("cDPO eps=0.2 vs TRL aot, one pair (model level)", abs(ours.mean().item() - trl_loss.item()))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_ipo_matches_trl(lm_pair: Any, tokenizer: Any, tmp_path: Path, label_smoothing: float) -> None:
    # TRL's IPO divides each log-ratio by its completion length (``completion_mask.sum()``,
    # which counts the same tokens as our shifted mask: the prompt is never empty), i.e. it
    # feeds *length-averaged* log-probs to (h - 1/(2 beta))^2; so do we.  TRL's "ipo" has no
    # smoothing term: label_smoothing > 0 leaves it unchanged, as our ipo_loss (which has none).
    # beta = 0.5 keeps the squared loss O(1), so float32 rounding stays far below the tolerance
    beta = 0.5
    trl_loss, s, _ = dpo_side_by_side(lm_pair, tokenizer, tmp_path, len(PAIRS), beta=beta, loss_type=["ipo"],
                                      label_smoothing=label_smoothing)
    ours, _, _ = ipo_loss(s["pc"] / s["nc"], s["pr"] / s["nr"], s["rc"] / s["nc"], s["rr"] / s["nr"], beta=beta)
    summed, _, _ = ipo_loss(s["pc"], s["pr"], s["rc"], s["rr"], beta=beta)
    assert abs(summed.mean().item() - trl_loss.item()) > 1e-2, "sum vs mean must be distinguishable"
    record(f"IPO ls={label_smoothing} (model level, length-averaged)", abs(ours.mean().item() - trl_loss.item()))


def test_dpo_weighted_mixture_matches_trl(lm_pair: Any, tokenizer: Any, tmp_path: Path) -> None:
    # a list of loss types is summed with ``loss_weights``: sigmoid and ipo together
    beta = 0.2
    trl_loss, s, _ = dpo_side_by_side(lm_pair, tokenizer, tmp_path, len(PAIRS), beta=beta,
                                      loss_type=["sigmoid", "ipo"], loss_weights=[0.7, 0.3])
    sig, _, _ = dpo_loss(s["pc"], s["pr"], s["rc"], s["rr"], beta=beta)
    ipo, _, _ = ipo_loss(s["pc"] / s["nc"], s["pr"] / s["nr"], s["rc"] / s["nc"], s["rr"] / s["nr"], beta=beta)
    record("DPO 0.7*sigmoid + 0.3*ipo (model level)", abs((0.7 * sig.mean() + 0.3 * ipo.mean()).item() - trl_loss.item()))


# ----------------------------------------------------------------- reward model


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_matches_trl_reward_trainer(tokenizer: Any, tmp_path: Path, with_margin: bool) -> None:
    # TRL: scores are the sequence-classification head's logits (last non-pad token), the
    # batch is [chosen rows; rejected rows], the loss -logsigmoid(r_w - r_l - margin) is
    # averaged over pairs; the optional per-pair margin is *subtracted* (Llama 2)
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(2)
    rm = LlamaForSequenceClassification(llama_config(tokenizer, num_labels=1)).eval()
    rows = [dict(r) for r in PAIRS]
    if with_margin:
        for r, m in zip(rows, (0.5, 0.0, 2.0, -1.0), strict=True):
            r["margin"] = m
    args = RewardConfig(**common_args(tmp_path), per_device_train_batch_size=len(rows), center_rewards_coefficient=None)
    trainer = RewardTrainer(model=copy.deepcopy(rm), args=args, train_dataset=conversational(rows, ("chosen", "rejected")),
                            processing_class=tokenizer)
    batch = collated(trainer, len(rows))
    assert ("margin" in batch) == with_margin
    trl_loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        scores = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = scores.chunk(2)
    assert (chosen - rejected).abs().max() > 0.1
    margin = batch["margin"] if with_margin else 0.0
    ours = bradley_terry_loss(chosen, rejected, margin=margin).mean()
    record(f"Bradley-Terry reward loss{' with margins' if with_margin else ''} (model level)",
           abs(ours.item() - trl_loss.item()))


# --------------------------------------------------------------------------- KTO


@pytest.mark.parametrize("swap", [False, True], ids=["policy-ref", "ref-policy"])
def test_kto_matches_trl(lm_pair: Any, tokenizer: Any, tmp_path: Path, swap: bool) -> None:
    # TRL: summed completion log-probs; the KL pair of row i is row i's prompt with the
    # completion of row i-1 in the same batch (rotation by one); z0 = mean over the batch of
    # (policy - ref) KL-pair log-probs, detached and clamped at 0; per-example losses
    # lambda_D (1 - sigma(beta (r - z0))) / lambda_U (1 - sigma(beta (z0 - r))) averaged over
    # the batch.  Swapping the roles of the two models flips the sign of the KL estimate, so
    # one case runs with z0 > 0 and the other with the clamp active.
    from trl import KTOConfig, KTOTrainer

    policy, ref = lm_pair[::-1] if swap else lm_pair
    beta, w_d, w_u = 0.5, 1.3, 0.8
    args = KTOConfig(**common_args(tmp_path), per_device_train_batch_size=len(UNPAIRED), beta=beta,
                     desirable_weight=w_d, undesirable_weight=w_u, precompute_ref_log_probs=False)
    trainer = KTOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                         train_dataset=conversational(UNPAIRED, ("completion",)), processing_class=tokenizer)
    batch = collated(trainer, len(UNPAIRED))
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_kl = trainer._metrics["train" if trainer.model.training else "eval"]["kl"][-1]
    with torch.no_grad():
        pol, _ = our_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        rf, _ = our_logps(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        pol_kl, _ = our_logps(policy, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
        ref_kl, _ = our_logps(ref, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    raw_kl = (pol_kl - ref_kl).mean().item()
    z0 = kto_kl_estimate(pol_kl, ref_kl)
    assert (raw_kl < 0) if swap else (raw_kl > 0), f"unexpected KL sign {raw_kl}"
    ours, _ = kto_loss(pol, rf, batch["label"], z0, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    # the baseline must matter: without the clamp (swap) or without z0 at all, the loss differs
    wrong_z0 = torch.tensor(raw_kl) if swap else torch.tensor(0.0)
    wrong, _ = kto_loss(pol, rf, batch["label"], wrong_z0, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    assert abs(wrong.mean().item() - trl_loss.item()) > 1e-4
    name = "clamped" if swap else "positive"
    record(f"KTO, KL estimate {name} (model level, KL)", abs(z0.item() - trl_kl))
    record(f"KTO, KL estimate {name} (model level, loss)", abs(ours.mean().item() - trl_loss.item()))


# ------------------------------------------------------------ CPO / SimPO / ORPO


def sample_logps(seed: int, n: int, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-sequence log-probs in [-high, -low] for chosen and rejected (float32, as trained)."""
    g = torch.Generator().manual_seed(seed)
    c = -(low + (high - low) * torch.rand(n, generator=g))
    r = -(low + (high - low) * torch.rand(n, generator=g))
    return c.requires_grad_(True), r.requires_grad_(True)


def grads_diff(ours: torch.Tensor, theirs: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> float:
    g1 = torch.autograd.grad(ours.sum(), inputs, retain_graph=True)
    g2 = torch.autograd.grad(theirs.sum(), inputs, retain_graph=True)
    return max((a - b).abs().max().item() for a, b in zip(g1, g2, strict=True))


@pytest.fixture(scope="module")
def pair_dataset() -> Dataset:
    return conversational(PAIRS, ("chosen", "rejected"))


def cpo_trainer(tok: Any, tmp: Path, ds: Dataset, **cfg: Any) -> Any:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tok))
    return CPOTrainer(model=model, args=CPOConfig(**common_args(tmp), **cfg), train_dataset=ds, processing_class=tok)


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("simpo", 0.0), ("simpo", 0.15), ("ipo", 0.0)])
def test_cpo_family_matches_trl_cpo_loss(tokenizer: Any, tmp_path: Path, pair_dataset: Dataset,
                                          loss_type: str, label_smoothing: float) -> None:
    # TRL's CPOTrainer.cpo_loss takes policy log-probs only (reference-free).  Conventions:
    # "sigmoid" (CPO) gets summed log-probs; "simpo" and "ipo" get length-averaged ones
    # (``average_log_prob=loss_type in ["ipo", "simpo"]``).  SimPO is loss_type="simpo" with
    # cpo_alpha=0 (no NLL term); TRL writes its margin as gamma/beta inside the logit,
    # beta (c - r - gamma/beta) = beta (c - r) - gamma, i.e. the paper's eq. 6.  Its "ipo"
    # is IPO without a reference, our ipo_loss with zero reference log-probs.
    beta = {"sigmoid": 0.1, "simpo": 2.0, "ipo": 0.5}[loss_type]
    gamma = 0.6
    trainer = cpo_trainer(tokenizer, tmp_path, pair_dataset, loss_type=loss_type, beta=beta, simpo_gamma=gamma,
                          cpo_alpha=0.0 if loss_type == "simpo" else 1.0, label_smoothing=label_smoothing)
    low, high = (5.0, 80.0) if loss_type == "sigmoid" else (0.05, 4.0)
    c, r = sample_logps(seed=3, n=16, low=low, high=high)
    theirs, trl_rw, trl_rl = trainer.cpo_loss(c, r)
    if loss_type == "sigmoid":
        assert label_smoothing == 0.0  # our CPO has no smoothing term; TRL's default is 0
        ours, rw, rl = cpo_loss(c, r, beta=beta)
    elif loss_type == "simpo":
        ours, rw, rl = simpo_loss(c, r, beta=beta, gamma=gamma, label_smoothing=label_smoothing)
    else:
        zero = torch.zeros_like(c)
        ours, rw, rl = ipo_loss(c, r, zero, zero, beta=beta)
        # TRL reports beta * logp as rewards here; ours are beta * (logp - ref) = the same with ref = 0
    name = f"CPOTrainer.cpo_loss {loss_type}" + (f" ls={label_smoothing}" if label_smoothing else "")
    record(f"{name} (tensor level, losses)", (ours - theirs).abs().max().item())
    record(f"{name} (tensor level, d loss / d logps)", grads_diff(ours, theirs, (c, r)))
    record(f"{name} (tensor level, rewards)", max((rw - trl_rw).abs().max().item(), (rl - trl_rl).abs().max().item()))


def test_orpo_matches_trl_odds_ratio_loss(tokenizer: Any, tmp_path: Path, pair_dataset: Dataset) -> None:
    # TRL's ORPOTrainer.odds_ratio_loss takes length-averaged log-probs
    # (``average_log_prob=True``) and returns beta * logsigmoid(log odds ratio), which its
    # trainer *subtracts* from the NLL (``loss = nll - losses.mean()``); ours returns the
    # positive L_OR = -logsigmoid(log odds ratio) for the adapter to weight by lambda.
    # So ours = -theirs / beta.  The check includes near-certain replies (mean log-prob
    # -1e-4) where log(1 - p) needs the expm1 branch.
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    beta = 0.25
    torch.manual_seed(0)
    trainer = ORPOTrainer(model=LlamaForCausalLM(llama_config(tokenizer)),
                          args=ORPOConfig(**common_args(tmp_path), beta=beta), train_dataset=pair_dataset,
                          processing_class=tokenizer)
    c, r = sample_logps(seed=4, n=16, low=0.05, high=4.0)
    with torch.no_grad():
        c[:2] = torch.tensor([-1e-4, -0.5])
        r[:2] = torch.tensor([-0.3, -1e-4])
    theirs, _, _, _, trl_log_odds_mean = trainer.odds_ratio_loss(c, r)
    ours, log_odds = orpo_odds_ratio_loss(c, r)
    record("ORPOTrainer.odds_ratio_loss (tensor level, losses)", (ours - (-theirs / beta)).abs().max().item())
    record("ORPOTrainer.odds_ratio_loss (tensor level, d loss / d logps)", grads_diff(ours, -theirs / beta, (c, r)))
    record("ORPOTrainer.odds_ratio_loss (tensor level, mean log odds)", abs(log_odds.mean().item() - trl_log_odds_mean.item()))
