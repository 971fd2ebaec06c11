"""Constitutional AI: Harmlessness from AI Feedback (Bai et al. 2022, arXiv:2212.08073): a model
made harmless by critiquing and revising its own answers under written principles (SL-CAI),
then by preferences an AI feedback model labels under those principles (RL-CAI).

    harness run method=cai data=toy-instruct train.max_length=128 train.max_prompt_length=96
    harness run method=cai method.stage=sl method.revisions=2
    harness run method=cai method.constitution=my_principles.yaml method.feedback_model=openai:gpt-4o-mini

The constitution is YAML (``method.constitution``; default: the data world's ``constitution``
resource): ``principles: [{name, critique_request, revision_request, choice_request?}]``;
anything else stops the run before any stage, naming the file and the key.

**SL-CAI** (paper §3; ``stage=sl`` or ``sl+rl``): the generator (``method.generator``; default
the start model, the paper's helpful-only model) answers red-team prompts (the world's
``redteam`` split, a seeded subset); then ``revisions`` times (the paper revises up to 4 times,
Figure 5's axis): a principle is drawn at random (seeded per prompt and step), the model
writes a critique of the current answer under the principle's critique request, then a
revision under its revision request; the revision becomes the current answer.  Critique and
revision prompts carry ``few_shot`` demonstrations from the world's ``critique_revision``
split (one by default: the toy models' context is 256 tokens, so the revision demo leaves
out its critique request).  The start model is fine-tuned (SFT) on the final revisions mixed
with helpful data: ``helpful_fraction`` of the SL rows are (prompt, reference answer) rows
of the world's ``sft`` split (its rows marked harmful are left out), as the paper mixes in
helpful samples to keep helpfulness.  An empty final revision is not trained on (counted).

**RL-CAI** (paper §4; ``stage=rl`` from the start model, ``sl+rl`` from the SL-CAI model):
the policy samples two answers per red-team prompt; a feedback model
(``method.feedback_model``: the policy itself, the start model, a local model or
``openai:<model>``) reads a multiple-choice prompt that lists both answers under a randomly
drawn principle's choice question and is asked for "(A)" or "(B)"; its normalised
probabilities p(A), p(B) from the next-token log-probs of the two options are the soft
label (averaged over both orders of the answers with ``both_orders``, against position
bias).  A pair is chosen over rejected when p != 0.5 (``min_margin``); pairs without a
valid label, ties and identical answers are dropped and counted.  The AI-labelled
harmlessness pairs are mixed with the world's gold-labelled ``paired`` split
(``helpful_pairs_fraction``), as the paper trains on AI harmlessness labels plus human
helpfulness labels.  Then ``rl_method=dpo`` (default): DPO from the policy with itself as the
reference, L = -log sigma(beta [log pi(y_w|x)/pi_ref(y_w|x) - log pi(y_l|x)/pi_ref(y_l|x)]);
or ``rl_method=ppo``: a Bradley-Terry reward model on the pairs, then PPO against it (the
paper's RL), both the existing ``reward`` / ``ppo`` methods as train stages.
``feedback_model=gold`` labels the pairs with the world's harmlessness scorer instead: the
"human labels" control against which AI feedback is judged.

What is recorded (the pipeline summary's ``rounds``: 0 the start model, 1 SL-CAI, 2 RL-CAI):
``harmlessness`` (the world's ``harmlessness`` scorer on the model's answers to the
held-out ``redteam_eval`` prompts, sampled like evaluation samples) and ``helpfulness`` (the
train stage's gold reward on the ordinary held-out eval prompts; round 0's is the baseline
column of the first train stage's evaluation); for SL-CAI also ``revision_harmlessness``
(harmlessness of the SL data after 0..revisions revisions, Figure 5's curve) and the counts;
for RL-CAI ``feedback_accuracy`` (agreement of the AI labels with the harmlessness scorer on
pairs whose answers differ in harmlessness: the paper's "AI labels approach human labels").

Claims (paper): SL-CAI and then RL-CAI are more harmless than the helpful-only start at
little cost in helpfulness; harmlessness of the revisions rises with the number of revisions.
"""

import random
from dataclasses import dataclass
from typing import Any, Literal

from harness.core.config import ranged
from harness.core.contract import DataKind, Paper, register_method
from harness.core.judging import choice_pairs, draw_principle, load_constitution

MAX_COUNT = 2**31 - 1


@dataclass
class CAIConfig:
    #: sl: SL-CAI only; rl: RL-CAI from the start model; sl+rl: RL-CAI from the SL-CAI model (the paper's)
    stage: Literal["sl", "rl", "sl+rl"] = "sl+rl"
    #: constitution YAML (principles with name, critique_request, revision_request); None: the data world's
    constitution: str | None = None
    #: critique -> revision steps per red-team answer; SL trains on the last (paper: up to 4, Figure 5)
    revisions: int = ranged(4, ge=1, le=16)
    #: red-team prompts for SL-CAI (a seeded subset of the world's redteam split; None: all)
    redteam_prompts: int | None = ranged(256, ge=1, le=MAX_COUNT)
    #: demonstrations from the world's critique_revision split in each critique / revision prompt
    few_shot: int = ranged(1, ge=0, le=16)
    #: share of helpful (sft split) rows in the SL-CAI data, beside the revisions
    helpful_fraction: float = ranged(0.5, ge=0, lt=1)
    #: who answers, critiques and revises in SL-CAI: "policy" (the start model), a local model, openai:<model>
    generator: str = "policy"
    #: sampling temperature of answers, critiques, revisions and RL samples (paper: 1)
    temperature: float = ranged(1.0, gt=0)
    #: longest answer / critique / revision (tokens)
    max_new_tokens: int = ranged(32, ge=1, le=1 << 20)
    #: longest critique / revision / feedback prompt (tokens; its start is cut beyond)
    max_prompt_length: int = ranged(220, ge=1, le=1 << 20)
    #: SL-CAI optimizer steps and learning rate (None: the run's train settings)
    sl_steps: int | None = ranged(None, ge=1, le=MAX_COUNT)
    sl_lr: float | None = ranged(None, gt=0)
    #: red-team prompts for RL-CAI's pairs (a seeded subset; None: all)
    rl_prompts: int | None = ranged(256, ge=1, le=MAX_COUNT)
    #: labels the RL pairs: "policy", "start", a local model, openai:<model>, or "gold" (the harmlessness scorer)
    feedback_model: str = "policy"
    #: ask the feedback model with the answers in both orders and average p(A) (position bias)
    both_orders: bool = True
    #: a pair needs |p - 0.5| > min_margin (0: only exact ties dropped)
    min_margin: float = ranged(0.0, ge=0, lt=0.5)
    #: samples per prompt an endpoint feedback model answers (a local model gives probabilities)
    feedback_samples: int = ranged(8, ge=1, le=256)
    #: share of gold-labelled helpfulness pairs (the world's paired split) in the RL data
    helpful_pairs_fraction: float = ranged(0.5, ge=0, lt=1)
    #: dpo: DPO on the pairs; ppo: a reward model on the pairs, then PPO against it
    rl_method: Literal["dpo", "ppo"] = "dpo"
    #: beta of RL-CAI's DPO (DPO's usual 0.1; the paper's RL is PPO, rl_method=ppo)
    beta: float = ranged(0.1, gt=0)
    #: RL-CAI optimizer steps (DPO or PPO) and learning rate (None: the run's train settings)
    rl_steps: int | None = ranged(None, ge=1, le=MAX_COUNT)
    rl_lr: float | None = ranged(None, gt=0)
    #: reward-model steps and learning rate of rl_method=ppo
    reward_steps: int = ranged(200, ge=1, le=MAX_COUNT)
    reward_lr: float = ranged(1e-3, gt=0)
    #: held-out red-team prompts answered to measure harmlessness (None: the whole redteam_eval split)
    harmlessness_prompts: int | None = ranged(None, ge=1, le=MAX_COUNT)

    def validate(self) -> None:
        if self.constitution is not None:
            load_constitution(self.constitution)  # a ConstitutionError names the file and the key
        for key in ("generator", "feedback_model"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key} is empty: use policy, a local model, or openai:<model>")


# --------------------------------------------------------------------------- prompts (pure)


def _demo_critique(d: dict[str, Any]) -> str:
    return (f"Request: {d['prompt']}\nAnswer: {d['response']}\nCritique request: {d['critique_request']}\n"
            f"Critique: {d['critique']}")


def _demo_revision(d: dict[str, Any]) -> str:
    return (f"Request: {d['prompt']}\nAnswer: {d['response']}\nCritique: {d['critique']}\n"
            f"Revision request: {d['revision_request']}\nRevision: {d['revision']}")


def critique_prompt(prompt: str, response: str, principle: dict[str, Any], demos: list[dict[str, Any]]) -> str:
    query = f"Request: {prompt}\nAnswer: {response}\nCritique request: {principle['critique_request']}\nCritique:"
    return "\n\n".join([*map(_demo_critique, demos), query])


def revision_prompt(prompt: str, response: str, critique: str, principle: dict[str, Any],
                    demos: list[dict[str, Any]]) -> str:
    query = (f"Request: {prompt}\nAnswer: {response}\nCritique: {critique}\n"
             f"Revision request: {principle['revision_request']}\nRevision:")
    return "\n\n".join([*[_demo_revision(d) for d in demos], query])


def feedback_prompt(prompt: str, a: str, b: str, principle: dict[str, Any]) -> str:
    """The multiple-choice feedback prompt (paper §4.1), short: the request, the principle's
    question, the two answers as options (A) and (B)."""
    return (f"Consider this request to an assistant: {prompt}\n{principle['choice_request']}\n"
            f"Options:\n(A) {a}\n(B) {b}\nThe answer is:")


def _demos(pool: list[dict[str, Any]], k: int, seed: int, *keys: Any) -> list[dict[str, Any]]:
    if k == 0 or not pool:
        return []
    return random.Random(repr(("demos", seed, *keys))).sample(pool, min(k, len(pool)))


# --------------------------------------------------------------------------- stage functions (pure)


def take(rows: list[dict[str, Any]], *, n: int | None, seed: int, salt: str) -> list[dict[str, Any]]:
    """A seeded subset of prompt rows (``prompt`` and ``category`` only)."""
    idx = list(range(len(rows)))
    random.Random(f"{salt}:{seed}").shuffle(idx)
    return [{"prompt": rows[i]["prompt"], **({"category": rows[i]["category"]} if "category" in rows[i] else {})}
            for i in sorted(idx[:n])]


def critique_inputs(current: list[dict[str, Any]], demos: list[dict[str, Any]], *, principles: list[dict[str, Any]],
                    few_shot: int, seed: int, step: int) -> list[dict[str, Any]]:
    """Each current answer with a randomly drawn principle and the critique prompt."""
    out = []
    for r in current:
        p = draw_principle(principles, seed, "critique", r["prompt"], step)
        out.append({"prompt": r["prompt"], "response": r["response"], "principle": p["name"],
                    "critique_prompt": critique_prompt(r["prompt"], r["response"], p,
                                                       _demos(demos, few_shot, seed, r["prompt"], step, "c"))})
    return out


def revision_inputs(critiqued: list[dict[str, Any]], demos: list[dict[str, Any]], *,
                    principles: list[dict[str, Any]], few_shot: int, seed: int, step: int) -> list[dict[str, Any]]:
    """Each critiqued answer with the revision prompt of the same principle."""
    by_name = {p["name"]: p for p in principles}
    return [{**r, "revision_prompt": revision_prompt(r["prompt"], r["response"], r["critique"], by_name[r["principle"]],
                                                      _demos(demos, few_shot, seed, r["prompt"], step, "r"))}
            for r in critiqued]


def adopt_revisions(revised: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The revision becomes the current answer (an empty one too: the same prompts are
    followed through every revision; ``empty`` counts them)."""
    rows = [{"prompt": r["prompt"], "response": r["revision"], "previous": r["response"], "principle": r["principle"],
             "critique": r["critique"]} for r in revised]
    return rows, {"rows": len(rows), "empty": sum(not r["response"].strip() for r in rows),
                  "changed": sum(r["response"].strip() != r["previous"].strip() for r in rows)}


def sl_data(final: list[dict[str, Any]], sft: list[dict[str, Any]], *, helpful_fraction: float,
            seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """SL-CAI's SFT rows: (red-team prompt, final revision) for every non-empty revision, plus
    helpful (prompt, reference) rows of the sft split so that they make ``helpful_fraction``
    of the data; sft rows marked harmful are never used."""
    revisions = [{"prompt": r["prompt"], "completion": r["response"]} for r in final if r["response"].strip()]
    pool = [r for r in sft if not r.get("harmful")]
    want = round(len(revisions) * helpful_fraction / (1 - helpful_fraction))
    if want > len(pool):
        raise ValueError(f"helpful_fraction={helpful_fraction} needs {want} helpful rows; the sft split has {len(pool)}")
    rng = random.Random(f"sl-helpful:{seed}")
    helpful = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rng.sample(pool, want)]
    rows = revisions + helpful
    rng.shuffle(rows)
    return rows, {"revision_rows": len(revisions), "empty_revisions_dropped": len(final) - len(revisions),
                  "helpful_rows": len(helpful), "harmful_sft_rows_excluded": len(sft) - len(pool)}


def choice_inputs(samples: list[dict[str, Any]], *, principles: list[dict[str, Any]], seed: int,
                  both_orders: bool) -> list[dict[str, Any]]:
    """Two samples of each prompt -> one multiple-choice question per order under a randomly
    drawn principle (the same principle for both orders)."""
    by_prompt: dict[int, list[str]] = {}
    prompt_of: dict[int, str] = {}
    for r in samples:
        by_prompt.setdefault(r["input_index"], []).append(r["response"])
        prompt_of[r["input_index"]] = r["prompt"]
    out = []
    for i, (a, b) in ((i, v[:2]) for i, v in sorted(by_prompt.items()) if len(v) >= 2):
        p = draw_principle(principles, seed, "choice", prompt_of[i])
        base = {"pair_index": i, "prompt": prompt_of[i], "response_a": a, "response_b": b, "principle": p["name"]}
        out.append({**base, "order": "ab", "choice_prompt": feedback_prompt(prompt_of[i], a, b, p)})
        if both_orders:
            out.append({**base, "order": "ba", "choice_prompt": feedback_prompt(prompt_of[i], b, a, p)})
    return out


def combine_orders(chosen: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """p(A is better) per pair: the mean over the orders asked (in order "ba" option (A) is
    response b); a pair with any unanswered order has no label (None), never a half one."""
    pairs: dict[int, dict[str, Any]] = {}
    for r in chosen:
        e = pairs.setdefault(r["pair_index"], {k: r[k] for k in ("prompt", "response_a", "response_b", "principle")}
                             | {"p": [], "missing": 0})
        if r["p_options"] is None:
            e["missing"] += 1
        else:
            e["p"].append(r["p_options"][0] if r["order"] == "ab" else r["p_options"][1])
    out = []
    for e in pairs.values():
        p = None if e["missing"] or not e["p"] else sum(e["p"]) / len(e["p"])
        out.append({k: e[k] for k in ("prompt", "response_a", "response_b", "principle")} | {"p_a": p})
    return out, {"pairs": len(out), "unlabelled": sum(r["p_a"] is None for r in out)}


def gold_labels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The control: p(A) from the harmlessness scorer (1, 0, or 0.5 when it cannot tell)."""
    return [{**r, "p_a": 0.5 if r["harm_a"] == r["harm_b"] else float(r["harm_a"] > r["harm_b"])} for r in rows]


def rl_data(labelled: list[dict[str, Any]], paired: list[dict[str, Any]], *, min_margin: float,
            helpful_pairs_fraction: float, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """AI-labelled harmlessness pairs (:func:`choice_pairs`) plus gold-labelled helpfulness pairs
    of the paired split (``helpful_pairs_fraction`` of the result), and the feedback's
    agreement with the harmlessness scorer where the two answers differ in harmlessness."""
    pairs, stats = choice_pairs(labelled, p_field="p_a", min_margin=min_margin)
    decisive = [r for r in labelled if r["harm_a"] != r["harm_b"] and r["p_a"] is not None]
    hits = sum(1.0 if (r["p_a"] > 0.5) == (r["harm_a"] > r["harm_b"]) and r["p_a"] != 0.5 else
               0.5 if r["p_a"] == 0.5 else 0.0 for r in decisive)
    stats["feedback_accuracy"] = hits / len(decisive) if decisive else None
    stats["feedback_decisive_pairs"] = len(decisive)
    stats["ai_pairs"] = len(pairs)
    want = round(len(pairs) * helpful_pairs_fraction / (1 - helpful_pairs_fraction))
    if want > len(paired):
        raise ValueError(f"helpful_pairs_fraction={helpful_pairs_fraction} needs {want} helpful pairs; "
                         f"the paired split has {len(paired)}")
    rng = random.Random(f"rl-helpful:{seed}")
    helpful = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rng.sample(paired, want)]
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs] + helpful
    rng.shuffle(rows)
    stats["helpful_pairs"] = len(helpful)
    return rows, stats


def mean_field(rows: list[dict[str, Any]], field: str) -> float:
    return sum(float(r[field]) for r in rows) / len(rows)


# --------------------------------------------------------------------------- the adapter


@register_method
class CAI:
    name = "cai"
    paper = Paper("Constitutional AI: Harmlessness from AI Feedback", "2212.08073", "Bai et al.")
    #: what the last stage trains on: preference pairs (SL-CAI alone trains on SFT rows)
    data_kind = DataKind.PAIRED
    needs_reference = True
    model_kind = "causal_lm"
    config_cls = CAIConfig
    stages = ("responses", "critique", "revision", "sl-train", "samples", "feedback", "pairs", "rl-train", "measure")

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {"method.beta": trial.suggest_float("method.beta", 0.01, 1.0, log=True),
                "train.lr": trial.suggest_float("train.lr", 1e-5, 1e-3, log=True)}

    def pipeline(self, hp: CAIConfig, ctx: Any) -> Any:
        seed = ctx.spec.seed
        principles = load_constitution(hp.constitution or ctx.world_resource("constitution"))
        ev = ctx.spec.eval
        redteam_eval = ctx.transform("redteam-eval", take, ctx.world_rows("redteam_eval"), n=hp.harmlessness_prompts,
                                     seed=seed, salt="harmlessness-eval")

        def harmlessness(tag: str, model: Any) -> float:
            ans = ctx.generate(f"{tag}-redteam-eval", model=model, prompts=redteam_eval, temperature=ev.temperature,
                               top_p=ev.top_p, max_new_tokens=ev.max_new_tokens, out_field="response", seed=ev.seed)
            return mean_field(ctx.score(f"{tag}-harmlessness", ans, scorer="harmlessness", response_field="response",
                                        out_field="harmlessness").load(), "harmlessness")

        def pick(name: str, policy: Any) -> Any:
            if name in ("policy", "gold"):  # gold: no model, the harmlessness scorer labels (_rl)
                return policy
            return ctx.start if name == "start" else ctx.model(name)

        start_harm = harmlessness("r0", ctx.start)
        ctx.record_round(0, ctx.start, stage="start", model_role="start (helpful-only)", harmlessness=start_harm)
        first: Any = None
        policy = ctx.start
        if hp.stage in ("sl", "sl+rl"):
            policy = first = self._sl(hp, ctx, principles, pick(hp.generator, ctx.start), seed)
            ctx.record_round(1, policy, harmlessness=harmlessness("r1", policy),
                             helpfulness=policy.eval.get("gold_reward_mean"))
        if hp.stage in ("rl", "sl+rl"):
            rl = self._rl(hp, ctx, principles, policy, pick(hp.feedback_model, policy), seed)
            first = first or rl
            ctx.record_round(2, rl, harmlessness=harmlessness("r2", rl), helpfulness=rl.eval.get("gold_reward_mean"))
            policy = rl
        ctx.record_round(0, ctx.start, helpfulness=first.eval.get("baseline_gold_reward_mean"))
        return policy

    def _sl(self, hp: CAIConfig, ctx: Any, principles: list[dict[str, Any]], gen: Any, seed: int) -> Any:
        demos = ctx.world_rows("critique_revision")
        red = ctx.transform("sl-prompts", take, ctx.world_rows("redteam"), n=hp.redteam_prompts, seed=seed, salt="sl")
        sampling = dict(temperature=hp.temperature, max_new_tokens=hp.max_new_tokens)
        current = ctx.generate("sl-responses", model=gen, prompts=red, out_field="response", seed=seed, **sampling)
        harm = [mean_field(ctx.score("sl-r0-harmlessness", current, scorer="harmlessness", response_field="response",
                                     out_field="harmlessness").load(), "harmlessness")]
        empty = [sum(not r["response"].strip() for r in current.load())]
        for k in range(1, hp.revisions + 1):
            cin = ctx.transform(f"sl-r{k}-critique-prompts", critique_inputs, current, demos, principles=principles,
                                few_shot=hp.few_shot, seed=seed, step=k)
            crit = ctx.generate(f"sl-r{k}-critique", model=gen, prompts=cin, prompt_field="critique_prompt",
                                out_field="critique", seed=seed * 100 + 2 * k, max_prompt_length=hp.max_prompt_length,
                                **sampling)
            rin = ctx.transform(f"sl-r{k}-revision-prompts", revision_inputs, crit, demos, principles=principles,
                                few_shot=hp.few_shot, seed=seed, step=k)
            rev = ctx.generate(f"sl-r{k}-revision", model=gen, prompts=rin, prompt_field="revision_prompt",
                               out_field="revision", seed=seed * 100 + 2 * k + 1,
                               max_prompt_length=hp.max_prompt_length, **sampling)
            current = ctx.transform(f"sl-r{k}-revised", adopt_revisions, rev)
            harm.append(mean_field(ctx.score(f"sl-r{k}-harmlessness", current, scorer="harmlessness",
                                             response_field="response", out_field="harmlessness").load(),
                                   "harmlessness"))
            empty.append(ctx.stats(current)["empty"])
        data = ctx.transform("sl-data", sl_data, current, ctx.world_rows("sft"), helpful_fraction=hp.helpful_fraction,
                             seed=seed)
        over: dict[str, Any] = {}
        if hp.sl_steps:
            over["train.max_steps"] = hp.sl_steps
        if hp.sl_lr:
            over["train.lr"] = hp.sl_lr
        sl = ctx.train("sl-cai", data=data, method={"name": "sft"}, model=ctx.start, round=1, overrides=over)
        st = ctx.stats(data)
        ctx.record_round(1, sl, model_role=f"SL-CAI ({hp.revisions} revisions)", revisions=hp.revisions,
                         revision_harmlessness=harm, revision_empty=empty, sl_revision_rows=st["revision_rows"],
                         sl_helpful_rows=st["helpful_rows"], sl_empty_revisions_dropped=st["empty_revisions_dropped"])
        return sl

    def _rl(self, hp: CAIConfig, ctx: Any, principles: list[dict[str, Any]], policy: Any, feedback: Any,
            seed: int) -> Any:
        prompts = ctx.transform("rl-prompts", take, ctx.world_rows("redteam"), n=hp.rl_prompts, seed=seed, salt="rl")
        samples = ctx.generate("rl-samples", model=policy, prompts=prompts, n=2, temperature=hp.temperature,
                               max_new_tokens=hp.max_new_tokens, out_field="response", seed=seed * 100 + 50)
        if hp.feedback_model == "gold":
            labels = ctx.transform("rl-choice-inputs", choice_inputs, samples, principles=principles, seed=seed,
                                   both_orders=False)
            labels = ctx.score("rl-harm-a", labels, scorer="harmlessness", response_field="response_a", out_field="harm_a")
            labels = ctx.score("rl-harm-b", labels, scorer="harmlessness", response_field="response_b", out_field="harm_b")
            labels = ctx.transform("rl-labels", gold_labels, labels)
        else:
            cin = ctx.transform("rl-choice-inputs", choice_inputs, samples, principles=principles, seed=seed,
                                both_orders=hp.both_orders)
            fb = ctx.choose("rl-feedback", model=feedback, rows=cin, prompt_field="choice_prompt",
                            options=("(A)", "(B)"), n=hp.feedback_samples, seed=seed)
            labels = ctx.transform("rl-labels", combine_orders, fb)
            labels = ctx.score("rl-harm-a", labels, scorer="harmlessness", response_field="response_a", out_field="harm_a")
            labels = ctx.score("rl-harm-b", labels, scorer="harmlessness", response_field="response_b", out_field="harm_b")
        data = ctx.transform("rl-data", rl_data, labels, ctx.world_rows("paired"), min_margin=hp.min_margin,
                             helpful_pairs_fraction=hp.helpful_pairs_fraction, seed=seed)
        over: dict[str, Any] = {}
        if hp.rl_steps:
            over["train.max_steps"] = hp.rl_steps
        if hp.rl_lr:
            over["train.lr"] = hp.rl_lr
        if hp.rl_method == "dpo":
            rl = ctx.train("rl-cai", data=data, method={"name": "dpo", "beta": hp.beta}, model=policy, reference=policy,
                           round=2, overrides=over)
        else:
            rm = ctx.train("rl-reward", data=data, method={"name": "reward"}, model=policy,
                           overrides={"train.max_steps": hp.reward_steps, "train.lr": hp.reward_lr})
            ppo_prompts = ctx.transform("rl-ppo-prompts", take, ctx.world_rows("prompts"), n=hp.rl_prompts,
                                        seed=seed, salt="ppo")
            mixed = ctx.transform("rl-ppo-data", _mix_prompts, prompts, ppo_prompts)
            rl = ctx.train("rl-cai", data=mixed, method={"name": "ppo"}, model=policy, round=2,
                           overrides={**over, "reward.source": str(rm.run_dir)})
        st = ctx.stats(data)
        ctx.record_round(2, rl, model_role=f"RL-CAI ({hp.rl_method}, feedback {hp.feedback_model})",
                         feedback_model=hp.feedback_model, feedback_accuracy=st["feedback_accuracy"],
                         feedback_decisive_pairs=st["feedback_decisive_pairs"], ai_pairs=st["ai_pairs"],
                         helpful_pairs=st["helpful_pairs"], no_feedback_dropped=st["no_feedback_dropped"],
                         ties_dropped=st["ties_dropped"], identical_dropped=st["identical_dropped"],
                         empty_dropped=st["empty_dropped"], mean_p_chosen=st["mean_p_chosen"])
        return rl


def _mix_prompts(redteam: list[dict[str, Any]], helpful: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PPO's prompts: red-team and ordinary prompts, interleaved."""
    out: list[dict[str, Any]] = []
    for i in range(max(len(redteam), len(helpful))):
        out += [{"prompt": s[i]["prompt"]} for s in (redteam, helpful) if i < len(s)]
    return out
