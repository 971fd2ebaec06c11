"""Tests of harness.data.load: every input format from jsonl/json/csv/parquet files and saved
``datasets`` directories, conversions between data kinds, and the row-level errors.

    .venv/bin/pytest tests/test_data.py -q
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from harness.core.contract import DataKind  # noqa: E402
from harness.data.load import DataError, LoadedData, detect_format, load_records  # noqa: E402


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow caches that load_dataset builds out of the user's home."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
    datasets.disable_progress_bars()


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write rows in the format the suffix names; returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise AssertionError(suffix)
    return str(path)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


PAIRED = [{"prompt": f"Write about cats {i}", "chosen": f"Cats are great {i}", "rejected": f"meh {i}"} for i in range(4)]
SFT = [{"prompt": f"Say {i}", "completion": f"{i}!"} for i in range(3)]
UNPAIRED = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(4)]
PROMPTS = [{"prompt": f"Tell me about {w}"} for w in ("dogs", "rain", "tea")]
ALPACA = [
    {"instruction": "Translate to French", "input": "cat", "output": "chat"},
    {"instruction": "Name a colour", "input": "", "output": "blue"},
]
MESSAGES = [
    {"messages": [system("be brief"), user("hi"), assistant("hello"), user("bye?"), assistant("bye")]},
    {"messages": [user("2+2"), assistant("4")]},
]


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("columns", "fmt"),
    [
        (["prompt", "chosen", "rejected"], "paired"),
        (["chosen", "rejected"], "paired"),
        # ultrafeedback_binarized carries messages and scores next to its pairs
        (["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"], "paired"),
        (["prompt", "completion"], "sft"),
        (["prompt", "completion", "label"], "unpaired"),
        (["prompt"], "prompt"),
        (["instruction", "input", "output", "text"], "alpaca"),
        (["messages", "id"], "messages"),
    ],
)
def test_detect_format(columns: list[str], fmt: str) -> None:
    assert detect_format(columns) == fmt


def test_detect_format_unknown_columns_lists_the_known_sets() -> None:
    with pytest.raises(DataError, match=r"\[question, answer\].*prompt/chosen/rejected.*data.format"):
        detect_format(["question", "answer"])


# --------------------------------------------------------------------------- formats x file types


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet"])
def test_string_formats_from_every_file_type(tmp_path: Path, ext: str) -> None:
    paired = load_records(write(tmp_path / f"p{ext}", PAIRED), "train", DataKind.PAIRED)
    assert paired.format == "paired" and paired.n_skipped == 0
    assert paired.source == str(tmp_path / f"p{ext}")
    assert paired.records == [
        {"prompt": [user(r["prompt"])], "chosen": r["chosen"], "rejected": r["rejected"]} for r in PAIRED
    ]
    sft = load_records(write(tmp_path / f"s{ext}", SFT), "train", DataKind.SFT)
    assert sft.format == "sft"
    assert sft.records == [{"prompt": [user(r["prompt"])], "completion": r["completion"]} for r in SFT]
    unp = load_records(write(tmp_path / f"u{ext}", UNPAIRED), "train", DataKind.UNPAIRED)
    assert unp.format == "unpaired"
    assert [r["label"] for r in unp.records] == [True, False, True, False]
    assert all(type(r["label"]) is bool for r in unp.records)
    prm = load_records(write(tmp_path / f"q{ext}", PROMPTS), "train", DataKind.PROMPT)
    assert prm.format == "prompt"
    assert prm.records == [{"prompt": [user(r["prompt"])]} for r in PROMPTS]
    alp = load_records(write(tmp_path / f"a{ext}", ALPACA), "train", DataKind.SFT)
    assert alp.format == "alpaca"
    assert alp.records == [
        {"prompt": [user("Translate to French\n\ncat")], "completion": "chat"},
        {"prompt": [user("Name a colour")], "completion": "blue"},
    ]


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_message_formats_from_nested_file_types(tmp_path: Path, ext: str) -> None:
    conv = [
        {"prompt": [system("terse"), user(f"q{i}")], "chosen": [assistant(f"good {i}")],
         "rejected": [assistant(f"bad {i}")]}
        for i in range(3)
    ]
    got = load_records(write(tmp_path / f"c{ext}", conv), "train", DataKind.PAIRED)
    assert got.records == [
        {"prompt": [system("terse"), user(f"q{i}")], "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)
    ]
    sft = [{"prompt": [user(f"q{i}")], "completion": [assistant(f"a{i}")]} for i in range(2)]
    got = load_records(write(tmp_path / f"s{ext}", sft), "train", DataKind.SFT)
    assert got.records == [{"prompt": [user(f"q{i}")], "completion": f"a{i}"} for i in range(2)]
    msgs = load_records(write(tmp_path / f"m{ext}", MESSAGES), "train", DataKind.SFT)
    assert msgs.format == "messages"
    assert msgs.records == [
        {"prompt": [system("be brief"), user("hi"), assistant("hello"), user("bye?")], "completion": "bye"},
        {"prompt": [user("2+2")], "completion": "4"},
    ]


def test_implicit_prompt_from_shared_conversation_prefix(tmp_path: Path) -> None:
    rows = [
        {"chosen": [user("hi"), assistant("hey"), user("joke?"), assistant("a good one")],
         "rejected": [user("hi"), assistant("hey"), user("joke?"), assistant("no")]},
    ]
    got = load_records(write(tmp_path / "hh.jsonl", rows), "train", DataKind.PAIRED)
    assert got.records == [
        {"prompt": [user("hi"), assistant("hey"), user("joke?")], "chosen": "a good one", "rejected": "no"}
    ]


def test_ultrafeedback_layout_string_prompt_with_full_conversations(tmp_path: Path) -> None:
    """As in HuggingFaceH4/ultrafeedback_binarized: prompt is a string, chosen/rejected are the
    whole conversation including the user turn, plus extra columns that must be ignored."""
    rows = [
        {"prompt": "Why is the sky blue?", "prompt_id": "a1",
         "chosen": [user("Why is the sky blue?"), assistant("Rayleigh scattering.")],
         "rejected": [user("Why is the sky blue?"), assistant("It reflects the sea.")],
         "messages": [user("Why is the sky blue?"), assistant("Rayleigh scattering.")],
         "score_chosen": 9.0, "score_rejected": 3.5},
        {"prompt": "2+2?", "prompt_id": "a2",
         "chosen": [system("math tutor"), user("2+2?"), assistant("4")],
         "rejected": [system("math tutor"), user("2+2?"), assistant("5")],
         "messages": [user("2+2?"), assistant("4")], "score_chosen": 10.0, "score_rejected": 1.0},
    ]
    path = write(tmp_path / "train_prefs.parquet", rows)
    got = load_records(path, "train", DataKind.PAIRED)
    assert got.format == "paired"
    assert got.records == [
        {"prompt": [user("Why is the sky blue?")], "chosen": "Rayleigh scattering.", "rejected": "It reflects the sea."},
        {"prompt": [system("math tutor"), user("2+2?")], "chosen": "4", "rejected": "5"},
    ]
    # the same directory layout by split name, as on the hub
    got = load_records(str(tmp_path), "train_prefs", DataKind.SFT)
    assert got.records[1] == {"prompt": [system("math tutor"), user("2+2?")], "completion": "4"}


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    # sft columns, read as prompt-only
    got = load_records(write(tmp_path / "s.jsonl", SFT), "train", DataKind.PROMPT, fmt="prompt")
    assert got.format == "prompt" and got.records == [{"prompt": [user(r["prompt"])]} for r in SFT]
    with pytest.raises(DataError, match=r"format 'alpaca' needs column\(s\) 'instruction', 'output'.*prompt, completion"):
        load_records(write(tmp_path / "s2.jsonl", SFT), "train", DataKind.SFT, fmt="alpaca")
    with pytest.raises(DataError, match="unknown data format 'pairs'"):
        load_records(write(tmp_path / "s3.jsonl", SFT), "train", DataKind.SFT, fmt="pairs")


# --------------------------------------------------------------------------- directories


def test_directory_split_by_file_name(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    write(d / "train.jsonl", PAIRED)
    write(d / "test.jsonl", PAIRED[:1])
    train = load_records(str(d), "train", DataKind.PAIRED)
    test = load_records(str(d), "test", DataKind.PAIRED)
    assert len(train.records) == 4 and len(test.records) == 1
    assert train.source == str(d / "train.jsonl")
    with pytest.raises(DataError) as err:
        load_records(str(d), "validation", DataKind.PAIRED)
    msg = str(err.value)
    assert f"{d}[validation]" in msg and "test, train" in msg and "train.jsonl" in msg


def test_directory_with_hub_style_parquet_shards(tmp_path: Path) -> None:
    d = tmp_path / "hub"
    write(d / "data" / "train-00000-of-00002.parquet", PAIRED[:2])
    write(d / "data" / "train-00001-of-00002.parquet", PAIRED[2:])
    write(d / "data" / "test-00000-of-00001.parquet", PAIRED[:1])
    got = load_records(str(d), "train", DataKind.PAIRED)
    assert [r["chosen"] for r in got.records] == [r["chosen"] for r in PAIRED]
    assert got.source == f"{d}[train]"
    assert len(load_records(str(d), "test", DataKind.PAIRED).records) == 1


def test_saved_datasets_dir(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    conv = [{"messages": m["messages"]} for m in MESSAGES]
    DatasetDict({"train": Dataset.from_list(conv), "test": Dataset.from_list(conv[1:])}).save_to_disk(
        str(tmp_path / "saved")
    )
    train = load_records(str(tmp_path / "saved"), "train", DataKind.SFT)
    assert train.format == "messages" and len(train.records) == 2
    assert train.records[1] == {"prompt": [user("2+2")], "completion": "4"}
    assert load_records(str(tmp_path / "saved"), "test", DataKind.PROMPT).records == [{"prompt": [user("2+2")]}]
    with pytest.raises(DataError, match=r"no split 'dev'.*train, test"):
        load_records(str(tmp_path / "saved"), "dev", DataKind.SFT)

    Dataset.from_list(PAIRED).save_to_disk(str(tmp_path / "one"))
    assert len(load_records(str(tmp_path / "one"), "train", DataKind.PAIRED).records) == 4
    with pytest.raises(DataError, match="holds one split, 'train', not 'test'"):
        load_records(str(tmp_path / "one"), "test", DataKind.PAIRED)


def test_missing_file_lists_what_exists(tmp_path: Path) -> None:
    write(tmp_path / "prefs.jsonl", PAIRED)
    write(tmp_path / "sft.csv", SFT)
    with pytest.raises(DataError) as err:
        load_records(str(tmp_path / "pref.jsonl"), "train", DataKind.PAIRED)
    msg = str(err.value)
    assert "pref.jsonl: no such file" in msg and "prefs.jsonl, sft.csv" in msg


def test_single_file_has_only_the_train_split(tmp_path: Path) -> None:
    path = write(tmp_path / "prefs.jsonl", PAIRED)
    with pytest.raises(DataError, match="holds one split .'train'., not 'test'"):
        load_records(path, "test", DataKind.PAIRED)


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "prefs.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"prefs.txt: unsupported file type '.txt'"):
        load_records(str(tmp_path / "prefs.txt"), "train", DataKind.PAIRED)


def test_hub_ids_go_to_load_dataset(tmp_path: Path) -> None:
    """No network here: the hub path must fail with a DataError naming the id and split."""
    with pytest.raises(DataError, match=r"^no-such-org/no-such-data\[train_prefs\]: could not load"):
        load_records("no-such-org/no-such-data", "train_prefs", DataKind.PAIRED)


# --------------------------------------------------------------------------- conversions


def test_paired_to_sft_unpaired_and_prompt(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", PAIRED[:2])
    sft = load_records(path, "train", DataKind.SFT)
    assert sft.records == [{"prompt": [user(r["prompt"])], "completion": r["chosen"]} for r in PAIRED[:2]]
    unp = load_records(path, "train", "unpaired")
    assert unp.records == [
        {"prompt": [user(PAIRED[0]["prompt"])], "completion": PAIRED[0]["chosen"], "label": True},
        {"prompt": [user(PAIRED[0]["prompt"])], "completion": PAIRED[0]["rejected"], "label": False},
        {"prompt": [user(PAIRED[1]["prompt"])], "completion": PAIRED[1]["chosen"], "label": True},
        {"prompt": [user(PAIRED[1]["prompt"])], "completion": PAIRED[1]["rejected"], "label": False},
    ]
    prm = load_records(path, "train", DataKind.PROMPT)
    assert prm.records == [{"prompt": [user(r["prompt"])]} for r in PAIRED[:2]]


@pytest.mark.parametrize(
    ("rows", "fmt_name"),
    [(SFT, "sft"), (UNPAIRED, "unpaired"), (ALPACA, "alpaca"), (MESSAGES, "messages"), (PROMPTS, "prompt")],
)
def test_every_format_gives_prompts(tmp_path: Path, rows: list[dict[str, Any]], fmt_name: str) -> None:
    got = load_records(write(tmp_path / "d.jsonl", rows), "train", DataKind.PROMPT)
    assert got.format == fmt_name and len(got.records) == len(rows)
    assert all(set(r) == {"prompt"} and r["prompt"][-1]["role"] == "user" for r in got.records)


def test_open_conversation_is_a_prompt(tmp_path: Path) -> None:
    rows = [{"messages": [user("hi"), assistant("hey"), user("and now?")]}]
    got = load_records(write(tmp_path / "m.jsonl", rows), "train", DataKind.PROMPT)
    assert got.records == [{"prompt": [user("hi"), assistant("hey"), user("and now?")]}]


@pytest.mark.parametrize(
    ("rows", "kind", "needs"),
    [
        (SFT, DataKind.PAIRED, "needs paired data"),
        (UNPAIRED, DataKind.PAIRED, "needs paired data"),
        (PROMPTS, DataKind.SFT, "needs sft data"),
        (SFT, DataKind.UNPAIRED, "needs unpaired data"),
        (ALPACA, DataKind.UNPAIRED, "needs unpaired data"),
        (MESSAGES, DataKind.PAIRED, "needs paired data"),
    ],
)
def test_impossible_conversions_name_the_columns_needed(
    tmp_path: Path, rows: list[dict[str, Any]], kind: DataKind, needs: str
) -> None:
    path = write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_records(path, "train", kind)
    msg = str(err.value)
    assert msg.startswith(path) and needs in msg and "columns" in msg
    assert f"columns: {', '.join(rows[0])}" in msg


# --------------------------------------------------------------------------- row errors


def _bad(rows: list[dict[str, Any]], i: int, **change: Any) -> list[dict[str, Any]]:
    rows = [dict(r) for r in rows]
    rows[i].update(change)
    return rows


ROW_ERRORS = [
    # (rows, kind, 1-based row, column, phrase)
    (_bad(PAIRED, 2, chosen=5), DataKind.PAIRED, 3, "chosen", "expected a string or a list of chat messages, got int"),
    (_bad(PAIRED, 1, rejected=None), DataKind.PAIRED, 2, "rejected", "missing (null)"),
    (_bad(PAIRED, 3, prompt="   "), DataKind.PAIRED, 4, "prompt", "empty string"),
    (_bad(PAIRED, 0, rejected=PAIRED[0]["chosen"]), DataKind.PAIRED, 1, "chosen", "identical to 'rejected'"),
    (_bad(PAIRED, 1, prompt={"text": "hi"}), DataKind.PAIRED, 2, "prompt", "got dict"),
    (_bad(UNPAIRED, 2, label=2), DataKind.UNPAIRED, 3, "label", "expected a bool (true/false or 0/1), got int 2"),
    (_bad(UNPAIRED, 1, label="yes"), DataKind.UNPAIRED, 2, "label", "got str 'yes'"),
    (_bad(UNPAIRED, 3, label=None), DataKind.UNPAIRED, 4, "label", "missing (null)"),
    (_bad(SFT, 1, completion=""), DataKind.SFT, 2, "completion", "empty string"),
    (_bad(SFT, 2, completion=[user("x"), assistant("y")]), DataKind.SFT, 3, "completion",
     "expected one assistant message, got 2 messages (user, assistant)"),
    (_bad(SFT, 0, prompt=[{"role": "tool", "content": "x"}]), DataKind.SFT, 1, "prompt",
     "message 1: unknown role 'tool' (expected one of system, user, assistant)"),
    (_bad(SFT, 1, prompt=[user("a"), {"content": "b"}]), DataKind.SFT, 2, "prompt", "message 2: missing 'role'"),
    (_bad(SFT, 1, prompt=[user("a"), "b"]), DataKind.SFT, 2, "prompt",
     "message 2: expected an object with 'role' and 'content', got str"),
    (_bad(SFT, 2, prompt=[{"role": "user", "content": 3}]), DataKind.SFT, 3, "prompt",
     "message 1: 'content' must be a string, got int"),
    (_bad(SFT, 0, prompt=[]), DataKind.SFT, 1, "prompt", "empty list of chat messages"),
    (_bad(SFT, 0, prompt=[user("a"), assistant("b")]), DataKind.SFT, 1, "prompt", "must end with a user turn"),
    (_bad(MESSAGES, 1, messages=[user("hi"), assistant("yo"), user("and?")]), DataKind.SFT, 2, "messages",
     "must end with an assistant turn, ends with a user turn"),
    (_bad(MESSAGES, 0, messages="hi"), DataKind.SFT, 1, "messages", "expected a list of chat messages, got str"),
    (_bad(MESSAGES, 1, messages=[assistant("hi")]), DataKind.SFT, 2, "messages", "no turns before the final"),
    (_bad(ALPACA, 1, instruction=None), DataKind.SFT, 2, "instruction", "missing (null)"),
    (_bad(ALPACA, 0, input=7), DataKind.SFT, 1, "input", "expected a string, got int"),
    (_bad(ALPACA, 1, output="  "), DataKind.SFT, 2, "output", "empty string"),
]


@pytest.mark.parametrize(("rows", "kind", "row", "column", "phrase"), ROW_ERRORS)
def test_bad_row_stops_with_file_row_column(
    tmp_path: Path, rows: list[dict[str, Any]], kind: DataKind, row: int, column: str, phrase: str
) -> None:
    path = write(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_records(path, "train", kind)
    assert str(err.value).startswith(f"{path}: row {row}: column '{column}': ")
    assert phrase in str(err.value)
    assert (err.value.row, err.value.column) == (row, column)


def test_implicit_prompt_errors(tmp_path: Path) -> None:
    cases = [
        ({"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]},
         "chosen", "share no leading prompt turns"),
        ({"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("b")]},
         "chosen", "identical to 'rejected'"),
        ({"chosen": [user("a"), assistant("b"), user("c"), assistant("d")], "rejected": [user("a"), assistant("x")]},
         "chosen", "expected one assistant reply, got 3 turns (assistant, user, assistant)"),
        ({"chosen": [user("a"), assistant("b")], "rejected": [user("a")]},
         "rejected", "got 0 turns (nothing)"),
        ({"chosen": [user("a"), assistant("b")], "rejected": "x"}, "rejected", "expected a list of chat messages"),
    ]
    good = {"chosen": [user("q"), assistant("yes")], "rejected": [user("q"), assistant("no")]}
    for n, (bad, column, phrase) in enumerate(cases):
        path = write(tmp_path / f"c{n}.jsonl", [good, bad])
        with pytest.raises(DataError) as err:
            load_records(path, "train", DataKind.PAIRED)
        assert str(err.value).startswith(f"{path}: row 2: column '{column}': "), err.value
        assert phrase in str(err.value)


def test_bare_replies_without_prompt_column(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"row 1: column 'prompt': missing: chosen/rejected are bare replies"):
        load_records(path, "train", DataKind.PAIRED)


def test_missing_key_in_one_row_is_reported_as_null(tmp_path: Path) -> None:
    rows = [dict(r) for r in PAIRED]
    del rows[2]["rejected"]
    path = write(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"p.jsonl: row 3: column 'rejected': missing \(null\)"):
        load_records(path, "train", DataKind.PAIRED)


def test_bad_row_in_csv_and_parquet(tmp_path: Path) -> None:
    rows = _bad(SFT, 1, completion="")
    for ext in (".csv", ".parquet"):
        path = write(tmp_path / f"s{ext}", rows)
        # csv reads an empty cell as null, parquet keeps the empty string: both are bad
        with pytest.raises(DataError, match=rf"^{path}: row 2: column 'completion': (empty string|missing)"):
            load_records(path, "train", DataKind.SFT)


def test_csv_labels_in_any_spelling(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label\na,b,True\nc,d,false\ne,f,1\ng,h,0\n")
    got = load_records(str(path), "train", DataKind.UNPAIRED)
    assert [r["label"] for r in got.records] == [True, False, True, False]
    path.write_text("prompt,completion,label\na,b,1\nc,d,0\ne,f,\n")
    with pytest.raises(DataError, match=r"u.csv: row 3: column 'label': missing"):
        load_records(str(path), "train", DataKind.UNPAIRED)


def test_invalid_json_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRED[:2]) + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError, match=r"broken.jsonl: line 3: invalid JSON"):
        load_records(str(path), "train", DataKind.PAIRED)
    path = tmp_path / "broken.json"
    path.write_text('[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": }\n]\n')
    with pytest.raises(DataError, match=r"broken.json: line 3 column \d+: invalid JSON"):
        load_records(str(path), "train", DataKind.PAIRED)


def test_columns_missing_from_the_whole_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"x.jsonl: cannot tell the data format from the columns \[question, answer\]"):
        load_records(path, "train", DataKind.SFT)
    path = write(tmp_path / "y.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError, match=r"y.jsonl: format 'paired' needs column\(s\) 'chosen', 'rejected'; the data lacks 'rejected'"):
        load_records(path, "train", DataKind.PAIRED, fmt="paired")


# --------------------------------------------------------------------------- skipping and limits


def test_skip_bad_rows_counts_and_keeps_reasons(tmp_path: Path) -> None:
    rows = _bad(_bad(_bad(PAIRED, 0, chosen=5), 2, rejected=None), 3, rejected=PAIRED[3]["chosen"])
    path = write(tmp_path / "p.jsonl", rows)
    got = load_records(path, "train", DataKind.PAIRED, skip_bad_rows=True)
    assert isinstance(got, LoadedData)
    assert got.n_skipped == 3
    assert got.records == [{"prompt": [user(PAIRED[1]["prompt"])], "chosen": PAIRED[1]["chosen"],
                            "rejected": PAIRED[1]["rejected"]}]
    assert got.skipped_examples == [
        f"{path}: row 1: column 'chosen': expected a string or a list of chat messages, got int",
        f"{path}: row 3: column 'rejected': missing (null)",
        f"{path}: row 4: column 'chosen': identical to 'rejected' (a pair needs two different responses)",
    ]
    assert "3 malformed rows skipped" in got.describe()
    # ties do not matter for prompt-only use, so only two rows are bad there
    assert load_records(path, "train", DataKind.PROMPT, skip_bad_rows=True).n_skipped == 2
    tie = {"chosen": [user("q"), assistant("same")], "rejected": [user("q"), assistant("same")]}
    conv = write(tmp_path / "tie.jsonl", [tie])
    assert load_records(conv, "train", DataKind.PROMPT).records == [{"prompt": [user("q")]}]
    with pytest.raises(DataError, match="row 1: column 'chosen': identical"):
        load_records(conv, "train", DataKind.PAIRED)


def test_skip_bad_rows_keeps_only_a_few_examples(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "completion": i if i % 2 else f"c{i}"} for i in range(40)]
    got = load_records(write(tmp_path / "s.jsonl", rows), "train", DataKind.SFT, skip_bad_rows=True)
    assert got.n_skipped == 20 and len(got.records) == 20
    assert len(got.skipped_examples) == 5 and "row 2:" in got.skipped_examples[0]


def test_all_rows_bad_still_raises(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 3
    path = write(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"all 3 rows read are malformed; first: .*row 1: column 'chosen'"):
        load_records(path, "train", DataKind.PAIRED, skip_bad_rows=True)


def test_max_samples_takes_first_usable_records(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(50)]
    rows[1]["chosen"] = None
    path = write(tmp_path / "p.jsonl", rows)
    got = load_records(path, "train", DataKind.PAIRED, max_samples=3, skip_bad_rows=True)
    assert [r["chosen"] for r in got.records] == ["c0", "c2", "c3"] and got.n_skipped == 1
    # one pair gives two unpaired records; the limit counts records
    unp = load_records(write(tmp_path / "q.jsonl", rows[2:]), "train", DataKind.UNPAIRED, max_samples=3)
    assert [(r["completion"], r["label"]) for r in unp.records] == [("c2", True), ("r2", False), ("c3", True)]
    # a bad row after the limit is never read
    assert len(load_records(path, "train", DataKind.PAIRED, max_samples=1).records) == 1
    with pytest.raises(DataError, match="max_samples must be at least 1"):
        load_records(path, "train", DataKind.PAIRED, max_samples=0)


def test_empty_inputs(tmp_path: Path) -> None:
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), p)
    with pytest.raises(DataError, match=r"e.parquet: no rows"):
        load_records(str(p), "train", DataKind.PROMPT)
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"e.jsonl: empty file"):
        load_records(str(tmp_path / "e.jsonl"), "train", DataKind.PROMPT)
    (tmp_path / "e.csv").write_text("prompt,completion\n")
    with pytest.raises(DataError, match=r"e.csv: no rows \(only a header\)"):
        load_records(str(tmp_path / "e.csv"), "train", DataKind.PROMPT)
    (tmp_path / "lines.jsonl").write_text('{"prompt": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(DataError, match=r"lines.jsonl: line 2: expected one JSON object per line, got list"):
        load_records(str(tmp_path / "lines.jsonl"), "train", DataKind.PROMPT)


def test_large_file_is_fast(tmp_path: Path) -> None:
    n = 50_000
    rows = [{"prompt": [user(f"question {i}")], "chosen": [assistant(f"good {i}")],
             "rejected": [assistant(f"bad {i}")]} for i in range(n)]
    path = write(tmp_path / "big.jsonl", rows)
    start = time.perf_counter()
    got = load_records(path, "train", DataKind.PAIRED)
    elapsed = time.perf_counter() - start
    assert len(got.records) == n and got.records[-1]["chosen"] == f"good {n - 1}"
    # ~1.5 s measured on 2 shared cores; a per-row dataset access would take minutes
    assert elapsed < 20, elapsed
