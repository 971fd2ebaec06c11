"""The method adapter contract and the method registry.

A method is one file in ``methods/`` that defines a hyperparameter dataclass and an
adapter class decorated with ``@register_method``.  The training core
(``harness.training.loop``) reads the adapter's capability attributes to decide what to
load and compute (reference model or not, which data segments, reward head or LM
head) and calls ``objective`` with per-sequence log-probs; the objective is built
from the pure functions in ``harness.core.losses``.

    harness methods      # lists every registered adapter
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from harness.core.registry import Registry


class DataKind(str, Enum):
    """What a method consumes; the data layer turns any source into one of these."""

    SFT = "sft"  # prompt + completion (NLL on the completion)
    PAIRED = "paired"  # prompt + chosen + rejected
    UNPAIRED = "unpaired"  # prompt + completion + desirable label
    PROMPT = "prompt"  # prompts only (online / iterative methods generate their own)


#: the sequence segments the core forwards for each data kind (one concatenated forward)
SEGMENTS: dict[DataKind, tuple[str, ...]] = {
    DataKind.SFT: ("completion",),
    DataKind.PAIRED: ("chosen", "rejected"),
    # "kl": the prompt of example i with the completion of another example (KTO's KL baseline)
    DataKind.UNPAIRED: ("completion", "kl"),
    DataKind.PROMPT: (),
}


@dataclass(frozen=True)
class Paper:
    title: str
    arxiv: str
    authors: str = ""
    #: where the paper lives when it is not on arXiv
    url: str = ""

    @property
    def ref(self) -> str:
        return f"arXiv:{self.arxiv}" if self.arxiv else self.url

    def __str__(self) -> str:
        return f"{self.title} ({self.ref})"


@dataclass
class SeqOut:
    """Per-sequence results of one forward for one segment (all tensors shape [B])."""

    #: sum of log p(y_t | x, y_<t) over completion tokens
    logps: torch.Tensor
    #: number of completion tokens
    n_tokens: torch.Tensor
    #: scalar head output (reward models), else None
    score: torch.Tensor | None = None
    #: desirable flags of unpaired data (KTO), else None
    label: torch.Tensor | None = None
    #: [B, Lc] log-prob of each completion token (entry j = the j-th completion token), when
    #: the adapter asks for token-level values (``token_level = True``), else None
    token_logps: torch.Tensor | None = None
    #: [B, Lc] bool, True where row r has a j-th completion token
    token_mask: torch.Tensor | None = None
    #: [B, Lc] value estimate before each completion token (online methods with a critic), else None
    values: torch.Tensor | None = None

    @property
    def mean_logps(self) -> torch.Tensor:
        return self.logps / self.n_tokens.clamp(min=1)


@dataclass
class Normalizer:
    """Sizes of the whole optimizer step (all micro-batches), so that objectives divide
    by global counts and gradient accumulation gives the same gradient as one big batch."""

    sequences: int
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class ObjectiveOutput:
    #: this micro-batch's share of the step loss (already divided by the Normalizer's counts)
    loss: torch.Tensor
    #: per-example values to log, each shape [B]; the core averages them over the step
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutPlan:
    """How an online method's rollout stage samples and what it hands back (``adapter.rollout_plan``).

    Each rollout samples ``samples_per_prompt`` completions for every prompt of the cycle from
    the current policy, scores them with the run's reward source, computes the old policy's
    (and, with ``reference_logps``, the reference's) per-token log-probs, and is then used for
    ``updates`` optimizer steps (PPO's epochs x minibatches, GRPO's iterations).
    """

    samples_per_prompt: int
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    #: "scalar": every completion gets a score; "pairwise": two completions of a prompt become a
    #: (chosen, rejected) pair by the annotator's preference (OAIF)
    reward: str = "scalar"
    #: optimizer steps per rollout: passes over the rollout x minibatches per pass
    epochs: int = 1
    minibatches: int = 1
    #: per-token reference log-probs of the samples (KL penalties / estimators)
    reference_logps: bool = True
    #: a value model (critic) is trained beside the policy (PPO)
    critic: bool = False

    @property
    def updates(self) -> int:
        return self.epochs * self.minibatches


@dataclass
class Rollout:
    """One rollout of this process: N = prompts x samples_per_prompt scored completions,
    grouped by prompt (the samples of prompt i are consecutive).  Per-token tensors are in
    completion space ([N, Lc], entry j = the j-th completion token, ``mask`` marks real tokens)."""

    scores: torch.Tensor
    mask: torch.Tensor
    logps: torch.Tensor
    ref_logps: torch.Tensor | None
    values: torch.Tensor | None
    group_size: int
    #: sums a tensor over all processes (identity on one): for global means / variances
    all_reduce: Any = None


class MethodDeclarations(Protocol):
    """What every method declares, trained by one objective or run as a pipeline of stages."""

    name: ClassVar[str]
    paper: ClassVar[Paper]
    data_kind: ClassVar[DataKind]
    needs_reference: ClassVar[bool]
    #: "causal_lm" trains the LM head; "reward" a scalar sequence-classification head
    model_kind: ClassVar[str]
    config_cls: ClassVar[type]

    def search_space(self, trial: Any) -> dict[str, Any]:
        """Default Optuna search space: ``{"method.beta": trial.suggest_float(...)}``."""
        ...


@runtime_checkable
class MethodAdapter(MethodDeclarations, Protocol):
    """A method: capability attributes the core reads, and an objective on log-probs.

    Optional capabilities (class attributes, default off): ``token_level = True`` asks for
    per-token log-probs (``SeqOut.token_logps``); an *online* method (``data_kind = PROMPT``)
    also defines ``rollout_plan(hp) -> RolloutPlan`` and, for scalar rewards,
    ``advantages(hp, rollout, state) -> dict[str, Tensor]`` (per sample tensors handed to
    ``objective`` as its third argument, sliced per micro-batch; ``state`` is a dict kept
    across rollouts and saved in checkpoints, e.g. an adaptive KL coefficient).  For offline
    methods the third argument holds the cached reference log-probs.
    """

    def objective(
        self,
        hp: Any,
        policy: dict[str, SeqOut],
        reference: dict[str, torch.Tensor] | None,
        norm: Normalizer,
    ) -> ObjectiveOutput: ...


@runtime_checkable
class PipelineAdapter(MethodDeclarations, Protocol):
    """A method whose rounds are stages (``harness.pipelines``): the same declarations as a
    :class:`MethodAdapter`, and ``pipeline(hp, ctx)`` instead of (or beside) an objective."""

    def pipeline(self, hp: Any, ctx: Any) -> Any: ...


METHODS: Registry[Any] = Registry("method")


def register_method(cls: Any) -> Any:
    """Class decorator: instantiate the adapter and add it to ``METHODS``."""
    missing = [
        a
        for a in ("name", "paper", "data_kind", "needs_reference", "model_kind", "config_cls")
        if not hasattr(cls, a)
    ]
    if missing:
        raise TypeError(f"method adapter {cls.__name__} lacks {', '.join(missing)}")
    METHODS.register(cls.name)(cls())
    return cls


_loaded = False


#: the entry-point group through which installed packages add methods
ENTRY_POINT_GROUP = "align_harness.methods"


def load_methods() -> None:
    """Import every module of the ``methods`` package, then every ``align_harness.methods``
    entry point of installed packages, so their ``@register_method`` decorators run.

    A package adds a method without editing this repository::

        [project.entry-points."align_harness.methods"]
        my_method = "my_package.my_method"      # a module with a @register_method class
    """
    global _loaded
    if _loaded:
        return
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise ImportError(f"method plugin {ep.name!r} ({ep.value}) failed to import: {type(e).__name__}: {e}") from e
    _loaded = True


def hp_defaults(adapter: MethodAdapter) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(adapter.config_cls(), f.name) for f in dataclasses.fields(adapter.config_cls)}


def pairwise_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL-style per-pair metrics from implicit (or reward-model) rewards, each shape [B]."""
    return {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards.detach(),
        "rewards/margins": (chosen_rewards - rejected_rewards).detach(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
    }


def suggest_lr(trial: Any, low: float = 1e-5, high: float = 1e-3) -> dict[str, Any]:
    return {"train.lr": trial.suggest_float("train.lr", low, high, log=True)}


def suggest_beta_lr(trial: Any, beta_low: float = 0.01, beta_high: float = 1.0) -> dict[str, Any]:
    """The default space of a method with one strength parameter ``beta``: beta and lr, both log-uniform."""
    return {"method.beta": trial.suggest_float("method.beta", beta_low, beta_high, log=True), **suggest_lr(trial)}


def require_positive(**values: float) -> None:
    """Range check for hyperparameter ``validate()`` methods."""
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be > 0, got {value}")
