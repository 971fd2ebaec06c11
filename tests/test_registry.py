import pytest

from harness.core.contract import METHODS, DataKind, MethodAdapter, PipelineAdapter, load_methods
from harness.core.registry import Registry, RegistryError


def test_registry_duplicate_and_did_you_mean():
    reg: Registry[object] = Registry("widget")

    class A:
        name = "alpha"

    class B:
        name = "alpha"

    reg.register()(A)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register()(B)
    with pytest.raises(RegistryError, match="did you mean 'alpha'"):
        reg.get("alpah")


def test_builtin_methods_follow_the_contract():
    load_methods()
    expected = {"sft", "reward", "dpo", "ipo", "simpo", "orpo", "kto"}
    assert expected <= set(METHODS.names())
    for name in METHODS.names():
        a = METHODS.get(name)
        # a method trains on an objective; a pipeline method runs stages (and may offer an objective too)
        assert isinstance(a, MethodAdapter) or isinstance(a, PipelineAdapter), name
        assert isinstance(a.data_kind, DataKind)
        assert a.paper.ref and a.paper.title
        a.config_cls()  # the paper's defaults construct


def test_search_spaces_sample_values_that_resolve():
    """Every method's default space, sampled by a real study, gives overrides the spec accepts."""
    import optuna

    from harness.core.config import load_spec

    load_methods()
    for name in METHODS.names():
        a = METHODS.get(name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(3):
            space = a.search_space(study.ask())
            assert "train.lr" in space, name
            load_spec(None, [f"method={name}", *(f"{k}={v}" for k, v in space.items())])
