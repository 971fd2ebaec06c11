"""The world contract and registry: what a built-in benchmark provides, and how the engine asks for it.

    harness worlds                         # lists every registered world
    harness run method=sft data=toy-instruct model=toy-instruct:tiny

A *world* is one module (in ``harness/worlds/`` or in any installed package that declares
an ``align_harness.worlds`` entry point) with a class decorated by :func:`register_world`.
It provides, for a given ``(seed, size)``:

- **splits** on disk in TRL's column conventions, by data kind (``sft``, ``paired``,
  ``unpaired`` with a desirable share, ``prompt``) plus held-out **eval prompts**, and any
  extra files later methods read (a constitution, seed tasks, judge data ...);
- **scorers**: a named gold scorer with its range (``None`` where no gold is known), and
  per-group summaries of eval prompts (e.g. per task cluster, held-out clusters);
- **lm-eval tasks** (a directory of task YAMLs and the default task names);
- **base models**: named shapes and the SFT recipe this harness trains them with
  (``<world>:<size>`` as ``model=``), built and cached by ``harness.training.runner.ensure_base_model``;
- optionally a **task catalog** (``task_catalog()``, a :class:`harness.data.mixture.TaskCatalog`:
  tasks in clusters, template kinds, rendered rows), which makes ``data=flan:<world>`` a
  FLAN-style mixture of the world's tasks; the world stays the run's world (its eval prompts,
  scorers and base models), only the training rows are the mixture.

The engine (data loading, training, evaluation, judges, lm-eval) only talks to this
contract; no module outside ``harness/worlds`` names a particular world.  A hub or local
dataset is a :class:`DatasetWorld`: no gold scorer, no base models; judges and reward
models score it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

from harness.core.config import DataSpec, RunSpec
from harness.core.contract import DataKind
from harness.core.registry import Registry, RegistryError, did_you_mean
from harness.data.mixture import parse_source
from harness.store.cache import cache_dir, content_key

#: the entry-point group through which installed packages add worlds
ENTRY_POINT_GROUP = "align_harness.worlds"


class WorldError(ValueError):
    """A world cannot provide what was asked (unknown split, base model, option)."""


@dataclass(frozen=True)
class Scorer:
    """A programmatic score of a response to one of the world's own prompts."""

    name: str
    fn: Callable[[str, str], float]
    low: float
    high: float
    description: str
    #: bump when scores change meaning; it is part of every judgement-cache key
    version: str

    def __call__(self, prompt: str, response: str) -> float:
        return float(self.fn(prompt, response))

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class BaseModel:
    """A base model the harness trains for a world: a Llama shape and the SFT recipe."""

    name: str
    #: LlamaConfig keyword arguments (hidden_size, num_hidden_layers, ...)
    shape: Mapping[str, int]
    #: ``train.*`` settings of the SFT run that makes it (lr, epochs, batch_size, ...)
    recipe: Mapping[str, Any]
    description: str = ""
    #: context length of the model (max_position_embeddings) and of its SFT examples
    max_positions: int = 256
    max_length: int = 64
    max_prompt_length: int = 32


@dataclass(frozen=True)
class LMEvalTasks:
    #: tasks run by default when ``eval.lm_eval_tasks`` is not set
    default: tuple[str, ...]
    #: every task the directory defines (groups included)
    available: tuple[str, ...]
    #: directory of task YAMLs (passed to lm-eval's TaskManager as include_path)
    include: Path


@dataclass(frozen=True)
class WorldOptions:
    """What a built-in world's generated data depends on (``data.*`` keys of the run spec)."""

    seed: int = 0
    #: examples generated per split
    size: int = 2048
    #: share of desirable rows in the unpaired (KTO) split
    desirable_fraction: float = 0.5


@runtime_checkable
class World(Protocol):
    """The contract every world implements (see the module docstring).

    Construction and the declarative methods (``splits``, ``gold_scorer``, ``scorers``, the
    class attributes) must not build any data: ``harness worlds`` lists worlds through them.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: named base models (``model=<world>:<name>``) and the default one (``model=<world>``)
    base_models: ClassVar[Mapping[str, BaseModel]]
    default_base: ClassVar[str]
    options: WorldOptions

    @property
    def root(self) -> Path:
        """This world's cache directory (data, tokenizer, base models)."""
        ...

    def splits(self) -> dict[str, str]:
        """Split name -> one-line description (what ``harness worlds`` shows)."""
        ...

    def split_path(self, split: str) -> Path:
        """A jsonl file of the split (built on first use)."""
        ...

    def data_path(self, kind: DataKind) -> Path:
        """The split a method of this data kind trains on."""
        ...

    def eval_prompts(self) -> list[str]:
        """Held-out instructions every trained model is evaluated on."""
        ...

    def eval_groups(self, prompts: list[str]) -> dict[str, list[int]]:
        """Named groups of the given eval prompts (indices; groups may overlap), e.g. one per
        task cluster and one for the held-out clusters; {} when the world has none."""
        ...

    def gold_scorer(self) -> Scorer | None:
        ...

    def scorers(self) -> dict[str, Scorer]:
        """Every named scorer (the gold one included)."""
        ...

    def lm_eval_tasks(self) -> LMEvalTasks | None:
        ...

    def heldout_pairs(self) -> list[dict[str, Any]]:
        """Gold-labelled {prompt, chosen, rejected} pairs on held-out prompts (reward-model
        accuracy); [] when the world has no gold scorer."""
        ...

    def tokenizer_dir(self) -> Path:
        ...


class WorldClass(Protocol):
    """A registered world class, as ``WORLDS`` holds it: the :class:`World` class attributes, and
    ``cls(options)`` building the world (:func:`register_world` checks the attributes on import)."""

    name: str
    description: str
    base_models: Mapping[str, BaseModel]
    default_base: str

    def __call__(self, options: WorldOptions) -> World: ...


WORLDS: Registry[WorldClass] = Registry("world")


def register_world(cls: type) -> type:
    """Class decorator: add a world class to ``WORLDS`` (constructed with ``WorldOptions``)."""
    missing = [a for a in ("name", "description", "base_models", "default_base") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"world {cls.__name__} lacks {', '.join(missing)}")
    world = cast(WorldClass, cls)  # its class attributes were checked just above
    if world.base_models and world.default_base not in world.base_models:
        raise TypeError(f"world {cls.__name__}: default_base {world.default_base!r} is not one of its base_models")
    WORLDS.register(world.name)(world)
    return cls


_loaded = False


def load_worlds() -> None:
    """Import the built-in world modules and every ``align_harness.worlds`` entry point."""
    global _loaded
    if _loaded:
        return
    import harness.worlds as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"harness.worlds.{info.name}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # the module's @register_world runs on import
        except Exception as e:
            raise ImportError(f"world plugin {ep.name!r} ({ep.value}) failed to import: {type(e).__name__}: {e}") from e
    _loaded = True


_instances: dict[tuple[str, WorldOptions], Any] = {}


def get_world(name: str, options: WorldOptions | None = None) -> Any:
    """The world ``name`` with these options (one instance per process and options)."""
    load_worlds()
    options = options or WorldOptions()
    key = (name, options)
    if key not in _instances:
        try:
            cls = WORLDS.get(name)
        except RegistryError as e:
            raise WorldError(str(e)) from None
        _instances[key] = cls(options)
    return _instances[key]


def is_world(source: str) -> bool:
    load_worlds()
    return source in WORLDS


def world_cache_dir(name: str, version: str, options: WorldOptions, **extra: Any) -> Path:
    """Where a built-in world keeps its generated data for these options."""
    return cache_dir("worlds") / name / f"v{version}-{content_key({'options': options.__dict__, **extra}, 16)}"


def parse_model_name(name: str) -> tuple[str, str] | None:
    """``toy`` -> ("toy", default base); ``toy:tiny`` -> ("toy", "tiny"); None if not a world model."""
    load_worlds()
    world, sep, size = name.partition(":")
    if world not in WORLDS:
        return None
    cls = WORLDS.get(world)
    size = size if sep else cls.default_base
    if not cls.base_models:
        raise WorldError(f"world {world!r} has no base models; name a model with model=<path or hub id>")
    if size not in cls.base_models:
        raise WorldError(
            f"world {world!r} has no base model {size!r}{did_you_mean(size, list(cls.base_models))}; "
            f"choose from: {', '.join(cls.base_models)}"
        )
    return world, size


def base_model_target(world: Any, size: str) -> Path:
    """The cache directory of ``world``'s base model ``size`` (built or not)."""
    bm: BaseModel = world.base_models[size]
    key = content_key({"shape": dict(bm.shape), "recipe": dict(bm.recipe), "max_positions": bm.max_positions,
                       "max_length": bm.max_length, "max_prompt_length": bm.max_prompt_length}, 16)
    return world.root / f"base-{size}-{key}"


def find_base_model(name: str, options: WorldOptions | None = None) -> Path | None:
    """A built world base model's directory for ``name`` (``toy:tiny``), None if ``name`` is not
    a world model.  Raises :class:`WorldError` when it is one that has not been built yet:
    building is a training run (``harness.training.runner.ensure_base_model``), which entry points do first."""
    parsed = parse_model_name(name)
    if parsed is None:
        return None
    world = get_world(parsed[0], options)
    target = base_model_target(world, parsed[1])
    if not (target / "DONE").exists():
        raise WorldError(
            f"base model {name!r} is not built yet: `harness worlds build {parsed[0]} --model {parsed[1]}` "
            "builds it (so does any `harness run` that names it)"
        )
    return target


@dataclass
class DatasetWorld:
    """A hub or local dataset seen as a world: its own splits, no gold scorer, no base models."""

    source: str
    options: WorldOptions = field(default_factory=WorldOptions)
    name: ClassVar[str] = "dataset"
    description: ClassVar[str] = "a hub id or local file/directory: no gold scorer; judges and reward models score it"
    base_models: ClassVar[Mapping[str, BaseModel]] = {}
    default_base: ClassVar[str] = ""

    @property
    def root(self) -> Path:
        raise WorldError(f"{self.source!r} is a dataset, not a built-in world: it has no cache directory")

    def splits(self) -> dict[str, str]:
        return {}

    def split_path(self, split: str) -> Path:
        raise WorldError(f"{self.source!r} is a dataset: name its split with data.split")

    def data_path(self, kind: DataKind) -> Path:
        raise WorldError(f"{self.source!r} is a dataset: it is loaded from its source")

    def eval_prompts(self) -> list[str]:
        return []

    def eval_groups(self, prompts: list[str]) -> dict[str, list[int]]:
        return {}

    def gold_scorer(self) -> Scorer | None:
        return None

    def scorers(self) -> dict[str, Scorer]:
        return {}

    def lm_eval_tasks(self) -> LMEvalTasks | None:
        return None

    def heldout_pairs(self) -> list[dict[str, Any]]:
        return []

    def tokenizer_dir(self) -> Path:
        raise WorldError(f"{self.source!r} is a dataset: it has no tokenizer of its own")


def source_world(source: str) -> str | None:
    """The built-in world a data source names: ``<world>`` or a recipe over one (``flan:<world>``);
    None for a hub id or a path.  A recipe over something that is not a world is a :class:`WorldError`."""
    recipe = parse_source(source)
    if recipe is None:
        return source if is_world(source) else None
    if not is_world(recipe.world):
        raise WorldError(f"data.source={source!r}: {recipe.world!r} is not a built-in world"
                         f"{did_you_mean(recipe.world, WORLDS.names())}; choose from: {', '.join(WORLDS.names())}")
    return recipe.world


def world_for_source(source: str, options: WorldOptions | None = None) -> Any:
    """The registered world ``source`` names (directly or under a recipe, ``flan:<world>``), else a
    :class:`DatasetWorld` for a hub id / path."""
    name = source_world(source)
    if name is not None:
        return get_world(name, options)
    return DatasetWorld(source, options or WorldOptions())


def world_options(data: DataSpec) -> WorldOptions:
    """The options a run's built-in world data (and so its base models) depend on."""
    return WorldOptions(size=data.toy_size, desirable_fraction=data.desirable_fraction)


def spec_world(spec: RunSpec) -> Any:
    """The world a run's data comes from (a :class:`DatasetWorld` for hub / local data)."""
    return world_for_source(spec.data.source, world_options(spec.data))


def eval_world(spec: RunSpec) -> Any:
    """The world a run is evaluated on: ``eval.world`` when set, else its data's world."""
    if spec.eval.world is not None:
        if not is_world(spec.eval.world):
            raise WorldError(f"eval.world: {spec.eval.world!r} is not a built-in world; see `harness worlds`")
        return get_world(spec.eval.world, world_options(spec.data))
    return spec_world(spec)
