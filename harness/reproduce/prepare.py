"""Derived data files an experiment declares (``prepare:`` in a claims file), made before its sweep.

    harness reproduce cdpo          # writes <runs>/cdpo/<spec>/<budget>/data/relabel_pairs-<key>.jsonl first

``relabel_pairs``: a built-in world's preference pairs relabelled by the world's gold scorer
(the better answer becomes ``chosen``; pairs the scorer ties are dropped), then a declared
fraction of them flipped at random.  With ``flip_fraction: 0`` the labels are deterministic (the
setting of IPO's over-fitting argument, and an annotator equal to an online one); with
``flip_fraction: 0.3`` exactly 30% of the labels are wrong (cDPO's noisy labels, a known
rate).  The file is content-addressed by its recipe, written atomically, and its counts are
kept beside it (``.json``) for the report.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from harness.core.config import ConfigError
from harness.reproduce.claims import PrepareSpec
from harness.store.cache import content_key
from harness.store.runs import atomic_write_json, atomic_write_text, read_json, read_jsonl

#: bump when the recipe's output changes for the same declaration
PREPARE_VERSION = "1"


def relabel_pairs(rows: list[dict[str, Any]], gold: Any, flip_fraction: float, seed: int,
                  max_rows: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairs relabelled by ``gold(prompt, response)``: ties dropped, then ``round(flip_fraction * n)``
    pairs (chosen by a seeded shuffle) swapped.  Returns the rows and their counts."""
    out: list[dict[str, Any]] = []
    ties = 0
    for r in rows:
        prompt, a, b = r["prompt"], r["chosen"], r["rejected"]
        if not isinstance(prompt, str):
            raise ConfigError("prepare relabel_pairs: prompts must be strings (a built-in world's paired split)")
        ga, gb = gold(prompt, a), gold(prompt, b)
        if ga == gb:
            ties += 1
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if max_rows is not None and len(out) >= max_rows:
            break
    rng = random.Random(seed)
    order = list(range(len(out)))
    rng.shuffle(order)
    n_flip = round(flip_fraction * len(out))
    for i in order[:n_flip]:
        out[i] = {**out[i], "chosen": out[i]["rejected"], "rejected": out[i]["chosen"]}
    return out, {"rows": len(out), "flipped": n_flip, "ties_dropped": ties, "flip_fraction": flip_fraction}


def prepare(spec: PrepareSpec, out_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """Make (or find) the declared file under ``out_dir``; returns its path and counts."""
    from harness.worlds.base import WorldError, get_world

    recipe = {"v": PREPARE_VERSION, "kind": spec.kind, "world": spec.world, "split": spec.split,
              "flip_fraction": spec.flip_fraction, "max_rows": spec.max_rows, "seed": spec.seed}
    path = Path(out_dir) / f"{spec.kind}-{content_key(recipe, 12)}.jsonl"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, read_json(meta_path)
    try:
        world = get_world(spec.world)
        source = world.split_path(spec.split)
    except (WorldError, KeyError) as e:
        raise ConfigError(f"prepare: {e}") from None
    gold = world.gold_scorer()
    if gold is None:
        raise ConfigError(f"prepare: world {spec.world!r} has no gold scorer to relabel pairs with")
    rows, counts = relabel_pairs(read_jsonl(source), gold, spec.flip_fraction, spec.seed, spec.max_rows)
    if not rows:
        raise ConfigError(f"prepare: no pairs left after relabelling {source}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**counts, "recipe": recipe, "source": str(source), "scorer": gold.identity}
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(meta_path, meta)
    return path, meta
