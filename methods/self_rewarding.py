"""Self-Rewarding Language Models (Yuan et al. 2024, arXiv:2401.10020): one model both answers
and judges; each iteration it trains on preference pairs it labelled itself.

    harness run method=self-rewarding data=toy-instruct train.max_length=128 train.max_prompt_length=96
    harness run method=self-rewarding method.iterations=3 method.candidates=4 method.judge_samples=3

The recipe (paper §2-3), as stages of a pipeline (each a run in the store, resumable):

* **M1 = SFT on the seed data** (stage ``m1-sft``, round 1): instruction-following data (IFT,
  the data world's ``sft`` split) concatenated with LLM-as-a-judge data (EFT, the world's
  ``judge`` split: the additive 5-point rubric filled with an instruction and a response ->
  a justification ending in "Score: N"), minus ``judge_eval_items`` judge items held out to
  measure judging ability.  The paper starts from a pretrained model M0; our world's bases
  are SFT models of the ``sft`` split that never saw judge data, so M1 continues SFT from
  the start model on IFT + EFT (``seed_sft=false`` skips it when the start model already
  learnt both, e.g. a user's own IFT+EFT checkpoint).  The judge rows are longer than
  instruction rows (~130 prompt tokens), so this stage trains at ``judge_max_length``.
* **Self-instruction creation** for round t (M_t -> M_{t+1}), on NEW prompts: a fresh seeded
  subset of the world's ``prompts`` split each round (the paper writes new prompts by
  few-shot prompting; our world ships a prompt split instead), disjoint across rounds.
  M_t samples N candidates y^1..y^N per prompt (paper: N = 4, T = 0.7, p = 0.9) and judges
  each one itself with the world's rubric (``judge_rubric``), sampling the judgement
  ``judge_samples`` times (paper: 3) and averaging the parsed scores
  (:func:`harness.core.judging.self_reward_score`, r in [0, 5]).  A judgement that does not
  parse is counted and skipped; a candidate with no valid judgement is dropped (counted).
* **AIFT pairs**: per prompt, the highest-scoring candidate is chosen and the lowest
  rejected; equal best and worst scores give no pair (``ties_dropped``).  Candidates with the
  same text are one response scored by the mean of their scores (a small model often samples
  the same answer twice; judge noise must not pair a text with itself), and empty ones are
  not trained on (:func:`harness.core.judging.best_worst_pairs`, every drop counted).
* **M_{t+1} = DPO(M_t)** on those pairs with M_t as the reference (paper: beta = 0.1):
  L = -log sigma(beta [log pi(y_w|x)/pi_ref(y_w|x) - log pi(y_l|x)/pi_ref(y_l|x)]).

``iterations`` counts models as the paper does: M1 (seed SFT), M2, M3 (paper: 3).

What each round reports (the pipeline summary's ``rounds``; round t is M_t, round 0 the start):

* instruction following: the train stage's ordinary evaluation -- gold reward on held-out
  prompts and the win rate against the pipeline's start model (``eval.baseline``; in our
  world the start is an SFT model of the IFT data, the paper's "SFT baseline");
* judging ability: M_t's own scores of the held-out judge items against the gold scorer's
  (pairwise accuracy and Spearman rank correlation, the paper's Table 4 measures), and the
  same agreement on the candidates M_t judged for its training pairs
  (``candidate_judge_*``), with counts of malformed judgements and unscored items;
* the data: ``pairs``, ``ties_dropped``, ``malformed_judgements`` of the judgements that built
  M_{t+1}'s pairs are recorded on round t+1 (``pairs_judged_by`` names M_t's stage).

Claims (paper): win rate over the SFT baseline rises M1 -> M2 -> M3, and judging ability
(agreement with human rankings) improves over the iterations too.
"""

import random
from dataclasses import dataclass
from typing import Any

from harness.core.config import ranged
from harness.core.contract import DataKind, Paper, register_method
from harness.core.judging import best_worst_pairs, judge_agreement, self_reward_score

MAX_COUNT = 2**31 - 1


@dataclass
class SelfRewardingConfig:
    #: models M1..M_iterations: M1 is the seed SFT, each later one a self-rewarding DPO round (paper: 3)
    iterations: int = ranged(3, ge=1, le=100)
    #: candidate responses sampled per prompt (paper: N = 4)
    candidates: int = ranged(4, ge=2, le=64)
    #: judgements sampled per candidate, their valid scores averaged (paper: 3)
    judge_samples: int = ranged(3, ge=1, le=64)
    #: new prompts per round: a fresh seeded subset of the world's prompts split, disjoint across rounds
    prompts_per_round: int = ranged(256, ge=1, le=MAX_COUNT)
    #: sampling temperature of candidates and judgements (paper: 0.7)
    temperature: float = ranged(0.7, gt=0)
    #: nucleus sampling mass of candidates and judgements (paper: 0.9)
    top_p: float = ranged(0.9, gt=0, le=1)
    #: beta of the DPO rounds (paper: 0.1)
    beta: float = ranged(0.1, gt=0)
    #: longest candidate response (tokens)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)
    #: longest judgement (tokens): a short justification and "Score: N"
    judge_max_new_tokens: int = ranged(24, ge=1, le=1 << 20)
    #: train M1 on IFT + EFT from the start model; false: the start model already learnt both
    seed_sft: bool = True
    #: M1's optimizer steps and learning rate (None: the run's train settings)
    sft_steps: int | None = ranged(None, ge=1, le=MAX_COUNT)
    sft_lr: float | None = ranged(None, gt=0)
    #: IFT rows in M1's seed data (a seeded subset of the sft split; None: all)
    ift_rows: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: EFT rows in M1's seed data (from the judge split after the held-out items; None: all)
    eft_rows: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: judge items held out of EFT to measure judging ability every round
    judge_eval_items: int = ranged(64, ge=2, le=MAX_COUNT)
    #: sequence lengths for judge prompts (M1's SFT and every judge stage): rubric prompts are long
    judge_max_length: int = ranged(192, ge=2, le=1 << 20)
    judge_max_prompt_length: int = ranged(160, ge=1, le=1 << 20)

    def validate(self) -> None:
        if self.judge_max_prompt_length >= self.judge_max_length:
            raise ValueError(f"judge_max_prompt_length ({self.judge_max_prompt_length}) must be below "
                             f"judge_max_length ({self.judge_max_length})")


# --------------------------------------------------------------------------- pure stage functions


def _order(rows: list[dict[str, Any]], seed: int, salt: str) -> list[int]:
    idx = list(range(len(rows)))
    random.Random(f"{salt}:{seed}").shuffle(idx)
    return idx


def heldout_judge_items(judge: list[dict[str, Any]], *, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` judge items (a seeded subset) kept out of M1's training data: instruction,
    response and the gold scorer's score of the response."""
    if n >= len(judge):
        raise ValueError(f"judge_eval_items={n} leaves no judge rows to train on ({len(judge)} in the split)")
    keep = sorted(_order(judge, seed, "judge-heldout")[:n])
    return [{"instruction": judge[i]["instruction"], "response": judge[i]["response"], "gold": judge[i]["gold"],
             "gold_score": judge[i]["score"]} for i in keep]


def seed_data(sft: list[dict[str, Any]], judge: list[dict[str, Any]], *, ift_rows: int | None, eft_rows: int | None,
              heldout: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """M1's SFT data: IFT rows (the sft split) + EFT rows (the judge split without the held-out
    items), shuffled together."""
    train_judge = [judge[i] for i in sorted(_order(judge, seed, "judge-heldout")[heldout:])]
    ift = [sft[i] for i in _order(sft, seed, "ift")[:ift_rows]]
    eft = [train_judge[i] for i in _order(train_judge, seed, "eft")[:eft_rows]]
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in ift + eft]
    random.Random(f"mix:{seed}").shuffle(rows)
    return rows, {"ift_rows": len(ift), "eft_rows": len(eft), "heldout_judge_items": heldout}


def round_prompts(prompts: list[dict[str, Any]], *, n: int, round: int, seed: int) -> list[dict[str, Any]]:
    """Round ``round``'s new prompts: the round-th slice of one seeded shuffle, so no round
    reuses another's prompts.  ``instruction`` repeats the prompt for the judge's template."""
    order = _order(prompts, seed, "self-rewarding-prompts")
    lo = (round - 1) * n
    if lo + n > len(order):
        raise ValueError(f"round {round} needs prompts {lo}..{lo + n - 1} but the prompts split has {len(order)}; "
                         "lower method.prompts_per_round or raise data.toy_size")
    return [{"prompt": prompts[i]["prompt"], "instruction": prompts[i]["prompt"]} for i in order[lo:lo + n]]


def agreement(judged: list[dict[str, Any]], *, gold_field: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The judge's agreement with the gold scorer (statistics only; rows passed through)."""
    stats = judge_agreement([r["self_score"] for r in judged], [float(r[gold_field]) for r in judged])
    stats["malformed_judgements"] = sum(r["n_malformed"] for r in judged)
    stats["judgements"] = sum(len(r["judgements"]) for r in judged)
    return list(judged), stats


# --------------------------------------------------------------------------- the adapter


@register_method
class SelfRewarding:
    name = "self-rewarding"
    paper = Paper("Self-Rewarding Language Models", "2401.10020", "Yuan et al.")
    #: what each round trains on: self-rewarded (chosen, rejected) pairs
    data_kind = DataKind.PAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = SelfRewardingConfig
    stages = ("judge-heldout", "seed-sft", "prompts", "candidates", "self-judge", "pairs", "dpo")

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.beta": trial.suggest_float("method.beta", 0.01, 1.0, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def pipeline(self, hp: SelfRewardingConfig, ctx: Any) -> Any:
        seed = ctx.spec.seed
        rubric = ctx.world_resource("judge_rubric")
        judge_rows = ctx.world_rows("judge")
        heldout = ctx.transform("judge-heldout", heldout_judge_items, judge_rows, n=hp.judge_eval_items, seed=seed)
        judging = dict(template=rubric, n=hp.judge_samples, temperature=hp.temperature, top_p=hp.top_p,
                       max_new_tokens=hp.judge_max_new_tokens, parse=self_reward_score,
                       max_prompt_length=hp.judge_max_prompt_length)

        def judging_ability(t: int, model: Any) -> dict[str, Any]:
            judged = ctx.judge(f"r{t}-judge-heldout", model=model, rows=heldout, seed=seed, **judging)
            st = ctx.transform(f"r{t}-judge-agreement", agreement, judged, gold_field="gold")
            s = ctx.stats(st)
            return {"judge_accuracy": s["pairwise_accuracy"], "judge_spearman": s["spearman"],
                    "judge_items": s["n_items"], "judge_unscored_items": s["n_unscored"],
                    "judge_malformed": s["malformed_judgements"], "judge_judgements": s["judgements"]}

        ctx.record_round(0, ctx.start, stage="start", model_role="M0 (start)", **judging_ability(0, ctx.start))
        if hp.seed_sft:
            data = ctx.transform("m1-seed-data", seed_data, ctx.world_rows("sft"), judge_rows, ift_rows=hp.ift_rows,
                                 eft_rows=hp.eft_rows, heldout=hp.judge_eval_items, seed=seed)
            over: dict[str, Any] = {"train.max_length": hp.judge_max_length,
                                    "train.max_prompt_length": hp.judge_max_prompt_length}
            if hp.sft_steps:
                over["train.max_steps"] = hp.sft_steps
            if hp.sft_lr:
                over["train.lr"] = hp.sft_lr
            model = ctx.train("m1-sft", data=data, method={"name": "sft"}, model=ctx.start, round=1, overrides=over)
        else:
            model = ctx.start
        ctx.record_round(1, model, model_role="M1 (seed SFT: IFT + EFT)", **judging_ability(1, model))
        prompts = ctx.world_rows("prompts")
        for t in range(1, hp.iterations):
            rows = ctx.transform(f"r{t}-prompts", round_prompts, prompts, n=hp.prompts_per_round, round=t, seed=seed)
            cands = ctx.generate(f"r{t}-candidates", model=model, prompts=rows, n=hp.candidates,
                                 temperature=hp.temperature, top_p=hp.top_p, max_new_tokens=hp.max_new_tokens,
                                 out_field="response", seed=seed * 1000 + t)
            judged = ctx.judge(f"r{t}-self-judge", model=model, rows=cands, seed=seed * 1000 + t, **judging)
            gold = ctx.score(f"r{t}-gold", judged, scorer="gold", response_field="response", out_field="gold")
            cand = ctx.stats(ctx.transform(f"r{t}-candidate-agreement", agreement, gold, gold_field="gold"))
            ctx.record_round(t, model, candidate_judge_accuracy=cand["pairwise_accuracy"],
                             candidate_judge_spearman=cand["spearman"])
            pairs = ctx.transform(f"r{t}-pairs", best_worst_pairs, judged, text="response")
            ps = ctx.stats(pairs)
            model = ctx.train(f"r{t + 1}-dpo", data=pairs, method={"name": "dpo", "beta": hp.beta}, model=model,
                              reference=model, round=t + 1)
            ctx.record_round(t + 1, model, model_role=f"M{t + 1} (DPO on M{t}'s self-rewarded pairs)",
                             pairs=ps["pairs"], ties_dropped=ps["ties_dropped"],
                             unscored_candidates_dropped=ps["unscored_dropped"],
                             empty_candidates_dropped=ps["empty_dropped"],
                             duplicate_candidates_merged=ps["duplicates_merged"],
                             prompts_with_too_few_scored=ps["too_few_dropped"],
                             malformed_judgements=cand["malformed_judgements"], judgements=cand["judgements"],
                             pairs_judged_by=f"r{t}-self-judge", **judging_ability(t + 1, model))
        return model
