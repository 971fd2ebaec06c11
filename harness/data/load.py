"""Real-data loading: hub ids and local json/jsonl/parquet/csv files or directories, in
TRL's common column conventions, validated row by row and normalised to the record
shape a method's data kind needs (see ``harness.data.batching``).

    harness run method=dpo data=data/prefs.jsonl
    harness run method=dpo data=HuggingFaceH4/ultrafeedback_binarized data.split=train_prefs

Every source goes through ``datasets.load_dataset`` (``load_dataset("json",
data_files=...)`` for a local file), so local and hub data share one code path.

Input formats, detected from the columns unless ``data.format`` names one:

* ``paired``: prompt/chosen/rejected as strings or chat messages; also chosen/rejected
  as whole conversations whose shared leading turns are the prompt (no prompt column
  needed, e.g. HuggingFaceH4/ultrafeedback_binarized).
* ``sft``: prompt/completion; ``unpaired``: prompt/completion/label; ``prompt``: prompt.
* ``alpaca``: instruction/input/output.
* ``messages``: one conversation; the last assistant turn is the completion.

Output records: ``prompt`` is always a list of ``{"role", "content"}`` messages;
sft adds ``completion``, paired ``chosen``/``rejected``, unpaired ``completion`` and a
bool ``label``.  Malformed rows raise one :class:`DataError` that lists every one of
them (up to :data:`MAX_REPORTED`, then how many more) with the source, the 1-based row
(the Nth record of the split; blank jsonl lines are not rows) and the column; a json(l)
line that is not valid JSON, or a csv line with more fields than its header, is named by
its file and line.  ``skip_bad_rows=True`` drops all of these instead and returns each
dropped row with its reason (``LoadedData.skipped``; a run writes them to
``runs/<name>/skipped_rows.jsonl``).  A hub id that cannot be loaded is named, with
whether the process is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import ConfigError
from harness.core.contract import DataKind

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("paired", "sft", "unpaired", "prompt", "alpaca", "messages")
#: file suffix -> ``datasets`` packaged builder
BUILDERS: dict[str, str] = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
ROLES: tuple[str, ...] = ("system", "user", "assistant")
#: how many skip reasons ``LoadedData.skipped_examples`` keeps
MAX_SKIP_EXAMPLES = 5
#: how many bad rows one error message lists (then: how many more)
MAX_REPORTED = 20
#: environment variables that make the hub libraries work offline
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

Message = dict[str, str]
Record = dict[str, Any]


class DataError(ConfigError):
    """Unusable data.  The message names the file (or hub id and split), the 1-based row,
    the column and what is wrong (every bad row, up to :data:`MAX_REPORTED`); ``row`` and
    ``column`` hold the first one's for code."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.column = column


@dataclass
class LoadedData:
    records: list[Record]
    #: rows dropped because ``skip_bad_rows=True``
    n_skipped: int
    #: where the rows came from, e.g. ``data/prefs.jsonl`` or ``org/name[train_prefs]``
    source: str
    #: the input format, detected or given
    format: str
    #: the first few reasons rows were skipped, in the same words as the error would use
    skipped_examples: list[str] = field(default_factory=list)
    #: every skipped row: {"source", "row" (Nth record) or "line" (of the file), "column", "reason"}
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{len(self.records)} records from {self.source} (format {self.format})"
        if self.n_skipped:
            text += f"; {self.n_skipped} malformed rows skipped, e.g. {self.skipped_examples[0]}"
        return text


# --------------------------------------------------------------------------- formats

#: columns each input format must have, and columns it reads when present
_REQUIRED: dict[str, tuple[str, ...]] = {
    "paired": ("chosen", "rejected"),
    "sft": ("prompt", "completion"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {"paired": ("prompt",), "alpaca": ("input",)}

#: which input formats can feed each data kind (conversions happen per row)
_CONVERTIBLE: dict[DataKind, tuple[str, ...]] = {
    DataKind.SFT: ("sft", "alpaca", "messages", "paired"),
    DataKind.PAIRED: ("paired",),
    DataKind.UNPAIRED: ("unpaired", "paired"),
    DataKind.PROMPT: FORMATS,
}
_NEEDS: dict[DataKind, str] = {
    DataKind.SFT: "prompt/completion, instruction/input/output, messages, or prompt/chosen/rejected columns",
    DataKind.PAIRED: "prompt/chosen/rejected columns (or chosen/rejected conversations sharing the prompt)",
    DataKind.UNPAIRED: "prompt/completion/label or prompt/chosen/rejected columns",
    DataKind.PROMPT: "a prompt column (or any format that contains prompts)",
}


def detect_format(columns: Sequence[str]) -> str:
    """The input format that a set of column names follows (TRL's conventions).

    Paired wins over everything else because preference sets often carry extra columns
    (ultrafeedback_binarized also has ``messages``)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "paired"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if {"prompt", "completion"} <= cols:
        return "sft"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "messages" in cols:
        return "messages"
    if "prompt" in cols:
        return "prompt"
    raise DataError(
        f"cannot tell the data format from the columns [{', '.join(columns)}]: expected "
        "prompt/chosen/rejected (paired), prompt/completion (sft), prompt/completion/label (unpaired), "
        "instruction/input/output (alpaca), messages (messages) or prompt (prompt); "
        "rename the columns or set data.format"
    )


# --------------------------------------------------------------------------- row parsing


class _RowError(Exception):
    def __init__(self, column: str, what: str) -> None:
        super().__init__(what)
        self.column = column
        self.what = what


def _tname(value: Any) -> str:
    return type(value).__name__


def _text(value: Any, column: str) -> str:
    if value is None:
        raise _RowError(column, "missing (null)")
    if not isinstance(value, str):
        raise _RowError(column, f"expected a string, got {_tname(value)}")
    if not value.strip():
        raise _RowError(column, "empty string")
    return value


def _messages(value: list[Any], column: str) -> list[Message]:
    if not value:
        raise _RowError(column, "empty list of chat messages")
    out: list[Message] = []
    for j, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise _RowError(column, f"message {j}: expected an object with 'role' and 'content', got {_tname(m)}")
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise _RowError(column, f"message {j}: missing 'role'")
        if role not in ROLES:
            raise _RowError(column, f"message {j}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if content is None:
            raise _RowError(column, f"message {j}: missing 'content'")
        if not isinstance(content, str):
            raise _RowError(column, f"message {j}: 'content' must be a string, got {_tname(content)}")
        # an empty system prompt is common and harmless; an empty user or assistant turn is not
        if role != "system" and not content.strip():
            raise _RowError(column, f"message {j}: empty {role} content")
        out.append({"role": role, "content": content})
    return out


def _check_prompt_end(msgs: list[Message], column: str) -> list[Message]:
    if msgs[-1]["role"] != "user":
        raise _RowError(column, f"the prompt turns must end with a user turn, not {msgs[-1]['role']}")
    return msgs


def _prompt(value: Any, column: str = "prompt") -> list[Message]:
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, column)}]
    if isinstance(value, list):
        return _check_prompt_end(_messages(value, column), column)
    if value is None:
        raise _RowError(column, "missing (null)")
    raise _RowError(column, f"expected a string or a list of chat messages, got {_tname(value)}")


def _response(value: Any, column: str) -> str:
    """A reply: a string, or TRL's conversational form ``[{"role": "assistant", ...}]``."""
    if isinstance(value, str):
        return _text(value, column)
    if isinstance(value, list):
        msgs = _messages(value, column)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in msgs)
            raise _RowError(column, f"expected one assistant message, got {len(msgs)} messages ({roles})")
        return msgs[0]["content"]
    if value is None:
        raise _RowError(column, "missing (null)")
    raise _RowError(column, f"expected a string or a list of chat messages, got {_tname(value)}")


def _label(value: Any, column: str = "label") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    # csv readers give strings when a column mixes spellings ("True", "false", "1")
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if value is None:
        raise _RowError(column, "missing (null)")
    raise _RowError(column, f"expected a bool (true/false or 0/1), got {_tname(value)} {value!r}")


def _is_conversation(value: Any) -> bool:
    """True unless the value is a string or a single assistant message (a bare reply)."""
    if not isinstance(value, list):
        return False
    return len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant"


def _parse_paired(row: Record, kind: DataKind) -> list[Record]:
    c, r = row["chosen"], row["rejected"]
    if _is_conversation(c) or _is_conversation(r):
        # implicit prompt: both are whole conversations; their shared leading turns are the prompt
        for col, v in (("chosen", c), ("rejected", r)):
            if not isinstance(v, list):
                other = "rejected" if col == "chosen" else "chosen"
                raise _RowError(
                    col,
                    f"expected a list of chat messages like '{other}', got {_tname(v)} "
                    "(give both as conversations or both as replies)",
                )
        cm, rm = _messages(c, "chosen"), _messages(r, "rejected")
        k = 0
        while k < min(len(cm), len(rm)) and cm[k] == rm[k]:
            k += 1
        if cm == rm:
            if kind != DataKind.PROMPT or cm[-1]["role"] != "assistant":
                raise _RowError("chosen", "identical to 'rejected' (a pair needs two different responses)")
            k -= 1  # a tie still carries its prompt: everything before the shared reply
        if k == 0:
            raise _RowError("chosen", "chosen and rejected conversations share no leading prompt turns")
        for col, rest in (("chosen", cm[k:]), ("rejected", rm[k:])):
            if len(rest) != 1 or rest[0]["role"] != "assistant":
                roles = ", ".join(m["role"] for m in rest) or "nothing"
                raise _RowError(
                    col,
                    f"after the {k} prompt turns shared by chosen and rejected, expected one assistant "
                    f"reply, got {len(rest)} turns ({roles})",
                )
        prompt = _check_prompt_end(cm[:k], "chosen")
        chosen, rejected = cm[k]["content"], rm[k]["content"]
    else:
        if "prompt" not in row:
            raise _RowError(
                "prompt", "missing: chosen/rejected are bare replies, so the prompt must come from a 'prompt' column"
            )
        prompt = _prompt(row["prompt"])
        chosen, rejected = _response(c, "chosen"), _response(r, "rejected")
        # ties do not matter when only the prompts are used
        if chosen == rejected and kind != DataKind.PROMPT:
            raise _RowError("chosen", "identical to 'rejected' (a pair needs two different responses)")
    if kind == DataKind.PROMPT:
        return [{"prompt": prompt}]
    if kind == DataKind.SFT:
        return [{"prompt": prompt, "completion": chosen}]
    if kind == DataKind.UNPAIRED:
        # TRL's unpairing: the chosen reply is desirable, the rejected one undesirable
        return [
            {"prompt": prompt, "completion": chosen, "label": True},
            {"prompt": prompt, "completion": rejected, "label": False},
        ]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def _parse_sft(row: Record, kind: DataKind) -> list[Record]:
    prompt = _prompt(row["prompt"])
    if kind == DataKind.PROMPT:
        return [{"prompt": prompt}]
    return [{"prompt": prompt, "completion": _response(row["completion"], "completion")}]


def _parse_unpaired(row: Record, kind: DataKind) -> list[Record]:
    prompt = _prompt(row["prompt"])
    if kind == DataKind.PROMPT:
        return [{"prompt": prompt}]
    completion = _response(row["completion"], "completion")
    return [{"prompt": prompt, "completion": completion, "label": _label(row["label"])}]


def _parse_prompt(row: Record, kind: DataKind) -> list[Record]:
    return [{"prompt": _prompt(row["prompt"])}]


def _parse_alpaca(row: Record, kind: DataKind) -> list[Record]:
    instruction = _text(row["instruction"], "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _RowError("input", f"expected a string, got {_tname(extra)}")
    content = instruction + ("\n\n" + extra if extra and extra.strip() else "")
    prompt = [{"role": "user", "content": content}]
    if kind == DataKind.PROMPT:
        return [{"prompt": prompt}]
    return [{"prompt": prompt, "completion": _text(row["output"], "output")}]


def _parse_messages(row: Record, kind: DataKind) -> list[Record]:
    value = row["messages"]
    if value is None:
        raise _RowError("messages", "missing (null)")
    if not isinstance(value, list):
        raise _RowError("messages", f"expected a list of chat messages, got {_tname(value)}")
    conv = _messages(value, "messages")
    last = conv[-1]["role"]
    if kind == DataKind.PROMPT and last == "user":
        return [{"prompt": conv}]  # an open conversation is a prompt as it stands
    if last != "assistant":
        raise _RowError("messages", f"the conversation must end with an assistant turn, ends with a {last} turn")
    if len(conv) == 1:
        raise _RowError("messages", "no turns before the final assistant reply")
    prompt = _check_prompt_end(conv[:-1], "messages")
    if kind == DataKind.PROMPT:
        return [{"prompt": prompt}]
    return [{"prompt": prompt, "completion": conv[-1]["content"]}]


_PARSERS: dict[str, Callable[[Record, DataKind], list[Record]]] = {
    "paired": _parse_paired,
    "sft": _parse_sft,
    "unpaired": _parse_unpaired,
    "prompt": _parse_prompt,
    "alpaca": _parse_alpaca,
    "messages": _parse_messages,
}


# --------------------------------------------------------------------------- problems and the hub


def listing(problems: list[str], total: int | None = None) -> str:
    """One problem per line, at most :data:`MAX_REPORTED`, then how many more."""
    total = len(problems) if total is None else total
    lines = problems[:MAX_REPORTED]
    if total > len(lines):
        lines.append(f"... and {total - len(lines)} more ({total} in all)")
    return "\n".join(lines)


def offline_settings() -> list[str]:
    """The ``VAR=value`` settings that make this process offline to the hub ([] when online)."""
    return [f"{v}={os.environ[v]}" for v in OFFLINE_VARS
            if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]


def _chain(e: BaseException) -> list[BaseException]:
    out = [e]
    while (nxt := out[-1].__cause__ or out[-1].__context__) is not None and len(out) < 20:
        out.append(nxt)
    return out


def hub_unavailable(kind: str, name: str, exc: BaseException) -> str:
    """Why hub id ``name`` (a ``dataset`` or ``model``) could not be used, in words that name the
    id and say whether the process is offline, instead of the hub client's connection error."""
    offline = offline_settings()
    where = "file or directory" if kind == "dataset" else "directory"
    if offline:
        return (f"{name!r} is not a local {where} and not in the local hub cache, and this process is offline "
                f"({', '.join(offline)}): download the {kind} once with the hub reachable, or name a local {where}")
    chain = _chain(exc)
    cause = chain[-1]
    text = (f"{type(cause).__name__}: {cause}".splitlines() or [""])[0][:300]
    words = " ".join(f"{type(c).__name__} {c}" for c in chain).lower()
    if any(w in words for w in ("notfound", "not found", "404", "doesn't exist", "does not exist",
                                "not a valid model identifier", "repository not found")):
        return (f"no {kind} {name!r} on the Hugging Face hub and no local {where} of that name (check the id; "
                f"private or gated {kind}s need `hf auth login`): {text}")
    return f"the Hugging Face hub is unreachable, so the {kind} {name!r} cannot be fetched: {text}"


# --------------------------------------------------------------------------- sources

_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}(?:-.*)?$")


def _split_of(stem: str) -> str:
    m = _SHARD.match(stem)
    return m.group("split") if m else stem


def _is_local(source: str) -> bool:
    p = Path(source).expanduser()
    return p.exists() or p.suffix.lower() in BUILDERS or source.startswith(("/", "./", "../", "~"))


def _listing(paths: list[str], limit: int = 20) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "") if paths else "nothing"


def _data_files_under(d: Path) -> list[Path]:
    return sorted(
        p
        for p in d.rglob("*")
        if p.is_file()
        and p.suffix.lower() in BUILDERS
        and not any(part.startswith(".") for part in p.relative_to(d).parts)
    )


def _resolve_dir(d: Path, source: str, split: str) -> tuple[str, list[Path], str]:
    """(builder, files, description) of one split of a local directory."""
    desc = f"{source}[{split}]"
    if (d / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one folder per split
        splits = json.loads((d / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise DataError(f"{source}: no split {split!r} in this saved dataset; it has: {', '.join(splits)}")
        d = d / split
        if not (d / "state.json").is_file():
            raise DataError(f"{desc}: {d / 'state.json'} is missing; the saved dataset is incomplete")
    elif (d / "state.json").is_file():  # Dataset.save_to_disk: a single split
        saved = json.loads((d / "state.json").read_text()).get("_split") or "train"
        if saved != split:
            raise DataError(f"{source}: this saved dataset holds one split, {saved!r}, not {split!r}")
    if (d / "state.json").is_file():
        state = json.loads((d / "state.json").read_text())
        return "arrow", [d / f["filename"] for f in state["_data_files"]], desc
    files = _data_files_under(d)
    # a file belongs to a split by its name (train.jsonl, train-00000-of-00002.parquet)
    # or by a folder on its path (train/0000.parquet, the hub's parquet layout)
    chosen = [p for p in files if _split_of(p.stem) == split or split in p.relative_to(d).parts[:-1]]
    if not chosen:
        found = sorted({_split_of(p.stem) for p in files})
        rel = [str(p.relative_to(d)) for p in files]
        raise DataError(
            f"{desc}: no data file for split {split!r} (a file named {split}.jsonl/.json/.parquet/.csv "
            f"or under a '{split}/' folder); splits by file name: {_listing(found)}; data files: {_listing(rel)}"
        )
    builders = {BUILDERS[p.suffix.lower()] for p in chosen}
    if len(builders) > 1:
        raise DataError(
            f"{desc}: split {split!r} matches files of different kinds: "
            f"{_listing([str(p.relative_to(d)) for p in chosen])}; keep one kind"
        )
    if len(chosen) == 1:  # name the very file, so row numbers point into it
        desc = str(Path(source) / chosen[0].relative_to(d))
    return builders.pop(), chosen, desc


@dataclass
class _LineProblem:
    """A line of a local file that no reader can parse (a whole-file problem has line None)."""

    file: Path
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: line {self.line}: {self.reason}" if self.line is not None else f"{self.file}: {self.reason}"


def _json_problems(f: Path) -> tuple[list[_LineProblem], bool]:
    """Every line of a json/jsonl file the standard parser rejects, and whether those lines can be
    dropped one by one (JSON lines) or spoil the whole file (one JSON document)."""
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return [_LineProblem(f, None, f"not UTF-8 text (byte {e.start})")], False
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return [_LineProblem(f, None, f"line {e.lineno} column {e.colno}: invalid JSON: {e.msg}")], False
        return [], False
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(_LineProblem(f, n, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append(_LineProblem(f, n, f"expected one JSON object per line, got {_tname(obj)}"))
    return problems, True


def _csv_problems(f: Path) -> list[_LineProblem]:
    """Every csv record with more fields than the header (the reader rejects them; fewer fields
    read as nulls and are judged row by row)."""
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return [_LineProblem(f, None, f"not UTF-8 text (byte {e.start})")]
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    problems = []
    start = 1
    try:
        for rec in reader:
            if header is None:
                header = rec
            elif rec and len(rec) > len(header):
                problems.append(_LineProblem(f, start, f"{len(rec)} fields, but the header has {len(header)}"))
            start = reader.line_num + 1
    except csv.Error as e:
        problems.append(_LineProblem(f, reader.line_num, f"unreadable csv: {e}"))
    return problems


def _problems(builder: str, files: list[Path]) -> tuple[list[_LineProblem], bool]:
    """(every unparseable line of the files, whether dropping those lines leaves readable files)."""
    out: list[_LineProblem] = []
    droppable = True
    for f in files:
        if builder == "json":
            found, ok = _json_problems(f)
        elif builder == "csv":
            found, ok = _csv_problems(f), True
        else:
            found, ok = [], False
        out += found
        droppable = droppable and (ok or not found) and all(p.line is not None for p in found)
    return out, droppable


def _without_lines(builder: str, files: list[Path], bad: set[tuple[Path, int]], tmp: Path) -> tuple[list[Path], list[int]]:
    """Copies of ``files`` without the ``bad`` lines, and the original row number (1-based, over
    all files) of each row kept, so messages about later rows point into the original files."""
    out, rows = [], []
    row = 0
    for i, f in enumerate(files):
        text = f.read_text(encoding="utf-8")
        kept: list[str] = []
        if builder == "csv":
            reader = csv.reader(io.StringIO(text, newline=""))
            buf = io.StringIO()
            writer = csv.writer(buf)
            start, first = 1, True
            for rec in reader:
                if first:
                    writer.writerow(rec)
                    first = False
                elif rec:
                    row += 1
                    if (f, start) not in bad:
                        writer.writerow(rec)
                        rows.append(row)
                start = reader.line_num + 1
            body = buf.getvalue()
        else:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                row += 1
                if (f, n) not in bad:
                    kept.append(line)
                    rows.append(row)
            body = "".join(line + "\n" for line in kept)
        copy = tmp / f"{i:05d}{f.suffix.lower()}"
        copy.write_text(body, encoding="utf-8")
        out.append(copy)
    return out, rows


def _diagnose(builder: str, files: list[Path]) -> str | None:
    """Why ``datasets`` could not read local files, in terms of file and line: only called
    after it failed, because its own errors name neither (StopIteration for an empty file)."""
    for f in files:
        if f.stat().st_size == 0:
            return f"{f}: empty file"
    problems, _ = _problems(builder, files)
    if problems:
        return listing([str(p) for p in problems])
    if builder == "parquet":
        import pyarrow.parquet as pq

        if sum(pq.read_metadata(f).num_rows for f in files) == 0:
            return f"{files[0] if len(files) == 1 else files[0].parent}: no rows"
    if builder == "csv" and all(len(f.read_text(errors="replace").strip().splitlines()) <= 1 for f in files):
        return f"{files[0] if len(files) == 1 else files[0].parent}: no rows (only a header)"
    return None


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


@dataclass
class _Opened:
    ds: Any
    desc: str
    #: lines dropped before the reader saw them (skip_bad_rows), as skipped-row entries
    dropped: list[dict[str, Any]] = field(default_factory=list)
    #: original 1-based row number of each row of ``ds`` when lines were dropped, else None
    rows: list[int] | None = None


def _open(source: str, split: str, skip_bad_rows: bool = False, hint_skip: str | None = None) -> _Opened:
    """Load one split as a ``datasets.Dataset`` and describe where it came from."""
    import datasets

    if not _is_local(source):
        desc = f"{source}[{split}]"
        try:
            return _Opened(datasets.load_dataset(source, split=split), desc)
        except Exception as e:  # hub errors come in many types; all mean "cannot use this source"
            raise DataError(f"{desc}: could not load: {hub_unavailable('dataset', source, e)}") from None
    p = Path(source).expanduser()
    if p.is_file():
        builder = BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"{source}: unsupported file type {p.suffix!r}; use one of {', '.join(BUILDERS)}")
        if split != "train":
            raise DataError(
                f"{source}: a single file holds one split ('train'), not {split!r}; point data.source at a "
                f"directory holding {split}.jsonl (or similar) to read other splits"
            )
        files, desc = [p], source
    elif p.is_dir():
        builder, files, desc = _resolve_dir(p, source, split)
    else:
        parent = p.parent
        # only the folder itself: a recursive walk of e.g. the repo root would crawl .venv
        near = sorted(q.name for q in parent.glob("*") if q.suffix.lower() in BUILDERS) if parent.is_dir() else []
        where = f"; data files in {parent}/: {_listing(near)}" if parent.is_dir() else f"; {parent}/ does not exist"
        raise DataError(f"{source}: no such file or directory{where}")
    try:
        ds = datasets.load_dataset(builder, data_files={split: [str(f) for f in files]}, split=split)
    except Exception as e:  # the builders raise arrow/pandas/value errors without naming the row
        problems, droppable = _problems(builder, files)
        if not (skip_bad_rows and problems and droppable):
            cause = _root_cause(e)
            hint = f"\n{hint_skip}" if hint_skip and problems and droppable else ""
            raise DataError(
                (_diagnose(builder, files) or f"{desc}: could not read as {builder}: {type(cause).__name__}: {cause}")
                + hint
            ) from None
        return _open_without(builder, files, split, desc, problems)
    return _Opened(ds, desc)


def _open_without(builder: str, files: list[Path], split: str, desc: str, problems: list[_LineProblem]) -> _Opened:
    """skip_bad_rows: read the files without their unparseable lines, through the same reader."""
    import datasets

    bad = {(p.file, p.line) for p in problems if p.line is not None}
    dropped = [{"source": str(p.file), "line": p.line, "reason": p.reason} for p in problems]
    with tempfile.TemporaryDirectory(prefix="align-harness-rows-") as tmp:
        copies, rows = _without_lines(builder, files, bad, Path(tmp))
        if not rows:
            raise DataError(f"{desc}: no readable rows; every line is malformed:\n" + listing([str(p) for p in problems]))
        try:
            # in memory, cached inside the temporary directory: the copies leave nothing behind
            ds = datasets.load_dataset(builder, data_files={split: [str(f) for f in copies]}, split=split,
                                       cache_dir=str(Path(tmp) / "cache"), keep_in_memory=True)
        except Exception as e:
            cause = _root_cause(e)
            raise DataError(f"{desc}: could not read as {builder} even without its {len(bad)} malformed lines: "
                            f"{type(cause).__name__}: {cause}") from None
    log.warning("%s: skipped %d unparseable lines (data.skip_bad_rows=true), e.g. %s", desc, len(dropped), problems[0])
    return _Opened(ds, desc, dropped, rows)


# --------------------------------------------------------------------------- entry point


def load_records(
    source: str,
    split: str,
    kind: DataKind | str,
    *,
    fmt: str | None = None,
    max_samples: int | None = None,
    skip_bad_rows: bool = False,
    hint_skip: str | None = None,
) -> LoadedData:
    """Load, validate and normalise one split for a method of data kind ``kind``.

    ``source`` is a local file (one split, ``train``), a local directory (the files named
    after ``split``, or a ``save_to_disk`` directory) or a hub id.  ``max_samples`` keeps
    the first N usable records (after conversion: one pair gives two unpaired records).
    ``hint_skip``: a last line for the error about malformed rows, saying how the caller's
    user skips them (the runner: ``data.skip_bad_rows=true``).
    """
    kind = DataKind(kind)
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if max_samples is not None and max_samples < 1:
        raise DataError(f"max_samples must be at least 1, got {max_samples}")
    opened = _open(source, split, skip_bad_rows, hint_skip)
    ds, desc = opened.ds, opened.desc
    columns = list(ds.column_names)
    if len(ds) == 0:
        raise DataError(f"{desc}: no rows")
    if fmt is None:
        try:
            fmt = detect_format(columns)
        except DataError as e:
            raise DataError(f"{desc}: {e}") from None
    missing = [c for c in _REQUIRED[fmt] if c not in columns]
    if missing:
        raise DataError(
            f"{desc}: format {fmt!r} needs column(s) {', '.join(map(repr, _REQUIRED[fmt]))}; the data lacks "
            f"{', '.join(map(repr, missing))} (columns: {', '.join(columns)})",
            column=missing[0],
        )
    if fmt not in _CONVERTIBLE[kind]:
        raise DataError(
            f"{desc}: the method needs {kind.value} data ({_NEEDS[kind]}), but this data is in the {fmt!r} "
            f"format (columns: {', '.join(columns)}), which cannot be turned into it"
        )
    used = [c for c in _REQUIRED[fmt] + _OPTIONAL.get(fmt, ()) if c in columns]
    parse = _PARSERS[fmt]
    records: list[Record] = []
    skipped: list[dict[str, Any]] = list(opened.dropped)
    bad: list[str] = []
    first: tuple[int, str] | None = None
    examples: list[str] = [f"{d['source']}: line {d['line']}: {d['reason']}" for d in opened.dropped[:MAX_SKIP_EXAMPLES]]
    n_read = 0
    # columnar batches decode far faster than row-by-row indexing; unused columns are never decoded
    for batch in ds.select_columns(used).iter(batch_size=1024):
        cols = [batch[c] for c in used]
        for values in zip(*cols):
            row_no = opened.rows[n_read] if opened.rows is not None else n_read + 1
            n_read += 1
            try:
                records.extend(parse(dict(zip(used, values)), kind))
            except _RowError as e:
                message = f"{desc}: row {row_no}: column {e.column!r}: {e.what}"
                first = first or (row_no, e.column)
                if skip_bad_rows:
                    skipped.append({"source": desc, "row": row_no, "column": e.column, "reason": e.what})
                    if len(examples) < MAX_SKIP_EXAMPLES:
                        examples.append(message)
                else:
                    bad.append(message)  # keep going: one message lists every bad row
            if max_samples is not None and len(records) >= max_samples:
                break
        if max_samples is not None and len(records) >= max_samples:
            break
    if bad:
        hint = f"\n{hint_skip}" if hint_skip else ""
        raise DataError(listing(bad) + hint, row=first[0] if first else None, column=first[1] if first else None)
    n_skipped = len(skipped)
    if not records:
        raise DataError(
            f"{desc}: all {n_skipped} rows read are malformed; first: " + "; ".join(examples[:3]),
            row=1,
        )
    if max_samples is not None:
        del records[max_samples:]
    if n_skipped:
        log.warning("%s: skipped %d malformed rows (data.skip_bad_rows=true), e.g. %s", desc, n_skipped, examples[0])
    return LoadedData(records=records, n_skipped=n_skipped, source=desc, format=fmt, skipped_examples=examples,
                      skipped=skipped)
