import pytest

from harness.core.contract import METHODS, DataKind, MethodAdapter, load_methods
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
        assert isinstance(a, MethodAdapter)
        assert isinstance(a.data_kind, DataKind)
        assert a.paper.ref and a.paper.title
        a.config_cls()  # the paper's defaults construct


def test_search_spaces_with_fixed_trial():
    import optuna

    load_methods()
    for name in METHODS.names():
        a = METHODS.get(name)
        space = a.search_space(optuna.trial.FixedTrial({"train.lr": 1e-4, "method.beta": 0.2, "method.gamma": 0.5, "method.label_smoothing": 0.1}))
        assert "train.lr" in space
        from harness.core.config import load_spec

        load_spec(None, [f"method={name}", *(f"{k}={v}" for k, v in space.items())])
