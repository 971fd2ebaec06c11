"""Self-Play Fine-Tuning (Chen et al. 2024, arXiv:2401.01335): a pipeline of rounds.

    harness run method=spin method.iterations=3
    harness run method=spin method.control=true        # the paper's control: continued SFT, same data and rounds

Round t samples a response from model t to every SFT prompt of the round, pairs the
ground-truth response (chosen, "real") with the model's own (rejected, "generated"), and
trains model t+1 with SPIN's logistic loss with model t as the reference (λ is the
paper's regularisation).  Every round is a generate stage, a pairs stage and a train stage
in the run store, evaluated like any run against the starting model, so a report shows
one row per round; re-running after a kill resumes at the first unfinished stage.
"""

import random
from dataclasses import asdict, dataclass
from typing import Any

from harness.core.config import ranged
from harness.core.contract import (
    DataKind,
    ObjectiveOutput,
    Paper,
    pairwise_metrics,
    register_method,
)
from harness.core.online_losses import spin_loss


@dataclass
class SPINConfig:
    #: λ of SPIN's logistic loss (paper: 0.1)
    lam: float = ranged(0.1, gt=0)
    #: rounds of self-play (the paper reports iterations 0 -> 3)
    iterations: int = ranged(3, ge=1, le=100)
    #: SFT prompts per round (a fixed seeded subset; None = the whole SFT split)
    prompts_per_round: int | None = ranged(512, ge=1, le=2**31 - 1)
    temperature: float = ranged(1.0, gt=0)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)
    #: run the paper's control instead: continued SFT on the same rows for the same rounds
    control: bool = False


def subset(rows: list[dict[str, Any]], n: int | None, seed: int = 0) -> list[dict[str, Any]]:
    keep = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    if n is None or n >= len(keep):
        return keep
    return random.Random(seed).sample(keep, n)


def spin_pairs(generated: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ground truth as chosen, the model's own answer as rejected; identical pairs dropped
    (they carry no signal: h = 0 for both sides)."""
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["generated"]}
             for r in generated if r["generated"].strip() != r["completion"].strip()]
    return pairs, {"n_generated": len(generated), "n_identical_dropped": len(generated) - len(pairs)}


@register_method
class SPIN:
    name = "spin"
    paper = Paper("Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models", "2401.01335",
                  "Chen et al.")
    #: what each round trains on: (real, generated) pairs
    data_kind = DataKind.PAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = SPINConfig
    stages = ("generate", "pairs", "train")

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.lam": trial.suggest_float("method.lam", 0.01, 1.0, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def objective(self, hp, policy, reference, norm):
        losses, real, gen = spin_loss(policy["chosen"].logps, policy["rejected"].logps, reference["chosen"],
                                      reference["rejected"], lam=hp.lam)
        return ObjectiveOutput(losses.sum() / norm.sequences, pairwise_metrics(real, gen))

    def pipeline(self, hp: SPINConfig, ctx: Any) -> Any:
        model = ctx.start
        rows = ctx.transform("prompts", subset, ctx.world_rows("sft"), n=hp.prompts_per_round)
        for t in range(1, hp.iterations + 1):
            if hp.control:
                model = ctx.train(f"r{t}-sft", data=rows, method={"name": "sft"}, model=model, round=t)
                continue
            gen = ctx.generate(f"r{t}-generate", model=model, prompts=rows, temperature=hp.temperature,
                               max_new_tokens=hp.max_new_tokens, out_field="generated", seed=t)
            pairs = ctx.transform(f"r{t}-pairs", spin_pairs, gen)
            model = ctx.train(f"r{t}-train", data=pairs, method={"name": "spin", **asdict(hp)}, model=model,
                              round=t)
        return model
