"""Fuzzing the two front doors (issue 14): run specs and data rows.

Specs: random keys from the real schema (every section and every method's hyperparameters)
with random values: in range, out of range, wrong types, NaN/inf, huge integers, unknown keys
and near-miss names.  Each case either passes validation (``load_spec`` + the dry run
``check_spec``; no model loads) holding exactly the values given, or fails with a config
error naming a key it set; never another exception, never an out-of-range value accepted.
A couple of accepted specs train ``toy:tiny`` for real.

Data: random JSON-ish rows for each input format, plus broken lines.  Loading either
returns well-formed records (and, when skipping, a reason for every row it dropped) or
raises one DataError whose every line names the file and the row or line.

    pytest -q tests/test_fuzz.py                              # CI: 200 specs, 100 override strings, 100 data files
    HYPOTHESIS_PROFILE=long pytest -q tests/test_fuzz.py      # ten times as many, not derandomised
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from typing import Any, Literal

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness.core.config import ConfigError, RunSpec, field_range, load_spec, merge_raw, resolve  # noqa: E402
from harness.core.contract import METHODS, DataKind, load_methods  # noqa: E402

load_methods()

#: CI runs a fixed (derandomised) set of cases; HYPOTHESIS_PROFILE=long explores ten times more, at random
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def cases(n: int) -> settings:
    return settings(max_examples=n * (10 if LONG else 1), deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


#: a valid, cheap starting point: toy:tiny, a few steps, no evaluation
BASE = {"model": {"name_or_path": "toy:tiny"}, "data": {"max_samples": 64},
        "train": {"max_steps": 2, "batch_size": 4, "progress": False, "max_length": 64, "max_prompt_length": 32},
        "eval": {"enabled": False}, "tracking": {"mode": "disabled"}}
#: values that would make the dry run build a new toy world (seconds each): fuzz only their bad values
WORLD_OPTIONS = {"data.toy_size", "data.desirable_fraction"}


@dataclasses.dataclass(frozen=True)
class Key:
    key: str
    tp: Any
    rng: Any


def schema(cls: type, prefix: str = "") -> list[Key]:
    hints = typing.get_type_hints(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        if f.name in ("method", "tags"):
            continue
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += schema(tp, f"{prefix}{f.name}.")
        else:
            out.append(Key(prefix + f.name, tp, field_range(f)))
    return out


SPEC_KEYS = schema(RunSpec)
METHOD_KEYS = {m: schema(METHODS.get(m).config_cls, "method.") for m in METHODS.names()}


def _base(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), type(None) in args
    return tp, False


WRONG = st.sampled_from(["abc", "", [1, 2], {"a": 1}, True, 2.5, -7])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def value_for(draw, k: Key) -> tuple[Any, bool]:
    """(a value for key ``k``, whether the schema allows it)."""
    tp, nullable = _base(k.tp)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        v = draw(WRONG)
        return v, _allowed(v, tp, k.rng, nullable)
    if kind == 1:
        return None, nullable
    if tp is int or tp is float:
        lo = k.rng.lo if k.rng and k.rng.lo is not None else -(10**6)
        hi = k.rng.hi if k.rng and k.rng.hi is not None else 10**6
        if kind in (2, 3):  # inside
            v = draw(st.integers(math.ceil(lo), math.floor(min(hi, lo + 1000)))) if tp is int else \
                draw(st.floats(lo, min(hi, lo + 10), allow_nan=False))
        elif kind in (4, 5):  # at and past the bounds
            v = draw(st.sampled_from([lo, hi, lo - 1, hi + 1, lo - 1e-9, hi + 1e-9, -(10**30), 10**30, 10**400]))
            v = int(v) if tp is int and isinstance(v, float) and v.is_integer() else v
        elif kind == 6:
            v = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        else:
            v = draw(st.integers(-(10**40), 10**40) if tp is int else st.floats(allow_nan=True, allow_infinity=True))
        return v, _allowed(v, tp, k.rng, nullable)
    if tp is bool:
        v = draw(st.sampled_from([True, False, "true", 1, 0, "maybe"]))
        return v, isinstance(v, bool)
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    if union and not any(typing.get_origin(a) is Literal for a in typing.get_args(tp)):
        # e.g. ``int | list[str] | None``: fuzz the scalar member, whose range the key carries
        scalar = next(a for a in typing.get_args(tp) if a in (int, float, str))
        return draw(value_for(Key(k.key, scalar | None if nullable else scalar, k.rng)))
    if typing.get_origin(tp) is Literal or union:
        choices = [c for a in (typing.get_args(tp) if union else (tp,))
                   for c in (typing.get_args(a) if typing.get_origin(a) is Literal else [])]
        v = draw(st.one_of(st.sampled_from(choices), st.sampled_from([c + "x" for c in choices] + [c.upper() for c in choices])))
        return v, v in choices
    if typing.get_origin(tp) is list:
        v = draw(st.one_of(st.lists(TEXT, max_size=3), st.lists(st.integers(), min_size=1, max_size=2), TEXT))
        return v, isinstance(v, list) and all(isinstance(x, str) for x in v)
    v = draw(TEXT)
    return v, True  # free text: checked by meaning (paths, names) in the dry run


def _allowed(v: Any, tp: Any, rng: Any, nullable: bool) -> bool:
    if v is None:
        return nullable
    if isinstance(v, bool):
        return tp is bool
    if tp is int:
        return isinstance(v, int) and (rng is None or v in rng)
    if tp is float:
        if not isinstance(v, (int, float)):
            return False
        try:
            f = float(v)
        except OverflowError:
            return False
        return math.isfinite(f) and (rng is None or f in rng)
    if tp is str:
        return isinstance(v, str)
    return False  # wrong-type draws against lists / literals


def near_miss(draw, key: str) -> str:
    parts = key.split(".")
    last = parts[-1]
    i = draw(st.integers(0, max(len(last) - 1, 0)))
    how = draw(st.sampled_from(["drop", "double", "swap", "suffix"]))
    if how == "drop" and len(last) > 1:
        last = last[:i] + last[i + 1:]
    elif how == "double":
        last = last[:i] + last[i] + last[i:]
    elif how == "swap" and len(last) > 2 and i < len(last) - 1:
        last = last[:i] + last[i + 1] + last[i] + last[i + 2:]
    else:
        last = last + "s"
    return ".".join(parts[:-1] + [last])


@st.composite
def spec_case(draw) -> tuple[str, list[tuple[str, Any, bool]]]:
    method = draw(st.sampled_from(METHODS.names()))
    keys = SPEC_KEYS + METHOD_KEYS[method]
    known = {k.key for k in keys}
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique_by=lambda k: k.key))
    sets = []
    for k in chosen:
        v, ok = draw(value_for(k))
        if k.key in WORLD_OPTIONS and ok:
            v = {"data.toy_size": 2048, "data.desirable_fraction": 0.5}[k.key]
        sets.append((k.key, v, ok))
    extra = draw(st.integers(0, 5))
    if extra == 0:  # an unknown key: a near miss of a real one, or made up
        bad = near_miss(draw, chosen[0].key) if draw(st.booleans()) else "train." + draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True))
        if bad not in known and bad.split(".")[0] in ("train", "data", "eval", "model", "peft", "tracking", "method"):
            sets.append((bad, 1, False))
    return method, sets


def _user_errors() -> tuple[type[BaseException], ...]:
    from harness.cli.main import user_errors

    return user_errors()


def _get(spec: RunSpec, key: str) -> Any:
    first, *rest = key.split(".")
    obj = spec.method.hp if first == "method" else getattr(spec, first)
    for part in rest:
        obj = getattr(obj, part)
    return obj


@cases(200)
@given(case=spec_case())
def test_fuzzed_specs_pass_whole_or_fail_naming_a_key(case, tiny_base):
    from harness.training.runner import check_spec

    method, sets = case
    overrides = {"method.name": method, **{k: v for k, v, _ in sets}}
    errors = _user_errors()
    held: dict[str, Any] = {}
    try:
        spec = resolve(merge_raw(BASE, overrides))
        held = {k: _get(spec, k) for k, _, _ in sets}
        check_spec(spec)  # the dry run: everything before a model or the data loads
    except errors as e:
        msg = str(e)
        assert any(k in msg or k.split(".")[-1] in msg for k, _, _ in sets) or "method" in msg, (sets, msg)
        return
    bad = [(k, v) for k, v, ok in sets if not ok]
    assert not bad, f"accepted values outside the schema: {bad}"
    for k, v, _ in sets:  # held exactly as given (ints may widen to floats), nothing coerced
        assert held[k] == v or (isinstance(v, int) and held[k] == float(v)), (k, v, held[k])


@cases(100)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=4))
def test_fuzzed_override_strings_never_crash(args):
    """Whatever a user types after ``harness run``: a spec or a named config error."""
    try:
        load_spec(None, ["method=dpo", *args])
    except ConfigError as e:
        assert str(e)


@settings(cases(1), max_examples=2)
@given(lr=st.floats(1e-5, 1e-2), beta=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1))
def test_accepted_fuzzed_specs_train(lr, beta, seed, run_spec):
    from harness.training.runner import execute

    run = execute(run_spec("method=dpo", f"train.lr={lr!r}", f"method.beta={beta!r}", f"seed={seed}", "train.max_steps=2"))
    assert run.status()["status"] == "completed" and run.summary()["steps"] == 2
    assert all(math.isfinite(r["loss"]) for r in run.metrics() if "loss" in r)


# --------------------------------------------------------------------------- data rows

MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                                 "content": st.one_of(st.text(max_size=8), st.none(), st.integers())})
CELL = st.one_of(st.text(max_size=10), st.none(), st.integers(-2, 2), st.booleans(),
                 st.lists(MESSAGE, max_size=3), st.floats(allow_nan=False, allow_infinity=False))
COLUMNS = {"paired": ["prompt", "chosen", "rejected"], "sft": ["prompt", "completion"],
           "unpaired": ["prompt", "completion", "label"], "prompt": ["prompt"],
           "alpaca": ["instruction", "input", "output"], "messages": ["messages"]}


GOOD = {"paired": {"prompt": "q", "chosen": "good", "rejected": "bad"}, "sft": {"prompt": "q", "completion": "a"},
        "unpaired": {"prompt": "q", "completion": "a", "label": True}, "prompt": {"prompt": "q"},
        "alpaca": {"instruction": "do", "input": "", "output": "done"},
        "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}}


@st.composite
def data_case(draw) -> tuple[str, list[str], DataKind, bool]:
    fmt = draw(st.sampled_from(sorted(COLUMNS)))
    cols = COLUMNS[fmt]
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 7)) == 0:  # a broken line
            lines.append(draw(st.sampled_from(['{"prompt": ', "not json", "[1, 2]", "{'a': 1}", '"text"'])))
            continue
        if draw(st.booleans()):  # a good row of the format: files mix good and bad rows
            row = {c: v for c, v in GOOD[fmt].items()}
            row[cols[0]] = row[cols[0]] if fmt == "messages" else draw(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=6))
        else:
            row = {c: draw(CELL) for c in cols if draw(st.integers(0, 9))}
        lines.append(json.dumps(row))
    natural = {"paired": DataKind.PAIRED, "unpaired": DataKind.UNPAIRED, "prompt": DataKind.PROMPT}.get(fmt, DataKind.SFT)
    kind = natural if draw(st.booleans()) else draw(st.sampled_from(list(DataKind)))
    return fmt, lines, kind, draw(st.booleans())


def _well_formed(rec: dict[str, Any], kind: DataKind) -> bool:
    p = rec["prompt"]
    ok = isinstance(p, list) and p and all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                                           for m in p) and p[-1]["role"] == "user"
    if kind == DataKind.PAIRED:
        ok = ok and all(isinstance(rec[c], str) and rec[c].strip() for c in ("chosen", "rejected"))
    if kind in (DataKind.SFT, DataKind.UNPAIRED):
        ok = ok and isinstance(rec["completion"], str) and rec["completion"].strip() != ""
    if kind == DataKind.UNPAIRED:
        ok = ok and isinstance(rec["label"], bool)
    return bool(ok)


@cases(100)
@given(case=data_case())
def test_fuzzed_data_rows_load_well_formed_or_fail_naming_rows(case, tmp_path_factory):
    from harness.data.load import DataError, load_records

    fmt, lines, kind, skip = case
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    try:
        got = load_records(str(path), "train", kind, skip_bad_rows=skip)
    except DataError as e:
        msg = str(e)
        assert str(path) in msg, msg
        for line in msg.splitlines():
            if line.startswith(str(path)) and "row" not in line and "line" not in line:
                assert any(w in line for w in ("format", "column", "no rows", "empty", "expected")), line
        return
    assert got.records and all(_well_formed(r, kind) for r in got.records), got.records
    assert len(got.skipped) == got.n_skipped
    assert all(s["source"] and ("row" in s or "line" in s) and s["reason"] for s in got.skipped)
    assert skip or not got.skipped
