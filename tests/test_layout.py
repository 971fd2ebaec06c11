"""The package's shape: no import cycles (function-level imports included), sub-packages layered
in one direction, no world named outside ``harness/worlds``, and methods / worlds from an
installed plugin package.

    .venv/bin/pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"

#: sub-packages from the bottom up: each may import only itself and those before it
LAYERS = ("core", "store", "data", "worlds", "modeling", "evaluation", "training", "pipelines", "sweeps", "reporting",
          "reproduce", "cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every harness module ``path`` imports, at module level or inside functions (imports
    under ``if TYPE_CHECKING:`` are for the type checker only and are skipped)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("harness"):
                    found.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("harness"):
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    found.add(sub if sub in known else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # importing a.b.c also runs a and a.b: only the named module counts as the dependency
    return {m for m in found if m in known and m != me}


def graph() -> dict[str, set[str]]:
    files = sorted(HARNESS.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := dfs(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := dfs(n)):
            return c
    return None


def test_no_import_cycle_between_modules():
    g = graph()
    assert len(g) > 40
    assert find_cycle(g) is None, f"import cycle: {' -> '.join(find_cycle(g) or [])}"


def test_cycle_finder_finds_a_function_level_cycle(tmp_path):
    a, b = tmp_path / "harness" / "a.py", tmp_path / "harness" / "b.py"
    a.parent.mkdir()
    a.write_text("import harness.b\n")
    b.write_text("def f():\n    from harness.a import x\n")
    known = {"harness.a", "harness.b"}
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        g = {"harness.a": imports_of(a, known), "harness.b": imports_of(b, known)}
    finally:
        ROOT = old
    assert find_cycle(g) == ["harness.a", "harness.b", "harness.a"]


def test_sub_packages_are_layered():
    bad = []
    for mod, deps in graph().items():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] not in LAYERS:
            continue
        mine = LAYERS.index(parts[1])
        for d in deps:
            dp = d.split(".")
            if len(dp) > 1 and dp[1] in LAYERS and LAYERS.index(dp[1]) > mine:
                bad.append(f"{mod} imports {d}")
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(sorted(bad))


def test_methods_import_only_the_core():
    bad = []
    for f in sorted((ROOT / "methods").glob("*.py")):
        for m in imports_of(f, {module_name(x) for x in HARNESS.rglob("*.py")}):
            if not m.startswith("harness.core"):
                bad.append(f"{f.name} imports {m}")
    assert not bad, bad


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants in code (docstrings and comments excluded)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_world_is_named_outside_the_worlds_package():
    from harness.worlds.base import WORLDS, load_worlds

    load_worlds()
    names = set(WORLDS.names())
    assert {"toy"} <= names
    known = {module_name(x) for x in HARNESS.rglob("*.py")}
    bad = []
    for f in sorted(HARNESS.rglob("*.py")):
        rel = f.relative_to(HARNESS)
        if rel.parts[0] == "worlds":
            continue
        for m in imports_of(f, known):
            if m.startswith("harness.worlds") and m != "harness.worlds.base":
                bad.append(f"{rel} imports {m}")
        for s in _code_strings(ast.parse(f.read_text())):
            if s.split(":")[0] in names and not (rel.as_posix() == "core/config.py" and s == "toy"):
                bad.append(f"{rel} names world {s!r}")
    assert not bad, bad


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "harness-plugin-demo"
        version = "0.1"

        [project.entry-points."align_harness.methods"]
        demo_sft = "harness_plugin_demo.method"

        [project.entry-points."align_harness.worlds"]
        echo = "harness_plugin_demo.world"

        [tool.setuptools]
        packages = ["harness_plugin_demo"]
        """,
    "harness_plugin_demo/__init__.py": "",
    "harness_plugin_demo/method.py": '''
        """A user's own method: token-mean NLL scaled by a typed factor."""
        from dataclasses import dataclass

        from harness.core.contract import DataKind, ObjectiveOutput, Paper, register_method, require_positive, suggest_lr
        from harness.core.losses import sft_loss


        @dataclass
        class DemoConfig:
            scale: float = 1.0

            def validate(self):
                require_positive(scale=self.scale)


        @register_method
        class DemoSFT:
            name = "demo-sft"
            paper = Paper("A plugin method", "", "Someone", "https://example.org")
            data_kind = DataKind.SFT
            needs_reference = False
            model_kind = "causal_lm"
            config_cls = DemoConfig

            def search_space(self, trial):
                return suggest_lr(trial)

            def objective(self, hp, policy, reference, norm):
                c = policy["completion"]
                return ObjectiveOutput(hp.scale * sft_loss(c.logps).sum() / norm.tokens["completion"], {})
        ''',
    "harness_plugin_demo/world.py": '''
        """A user's own world: answer with the prompt's last word; it reuses the toy world's
        tokenizer and base models, with its own data and gold scorer."""
        import random

        from harness.core.contract import DataKind
        from harness.worlds.base import Scorer, WorldOptions, get_world, register_world, world_cache_dir
        from harness.worlds._common import write_jsonl

        WORDS = ["apple", "river", "cloud", "stone", "bird", "lamp", "tree", "road"]


        def gold(prompt, response):
            return 1.0 if response.strip().split()[-1:] == prompt.split()[-1:] else 0.0


        @register_world
        class Echo:
            name = "echo"
            description = "repeat the last word"
            base_models = {}
            default_base = ""

            def __init__(self, options: WorldOptions):
                self.options = options

            @property
            def root(self):
                return world_cache_dir(self.name, "1", self.options)

            def splits(self):
                return {"sft": "{prompt, completion}"}

            def split_path(self, split):
                path = self.root / f"{split}.jsonl"
                if not path.exists():
                    rng = random.Random(self.options.seed)
                    rows = []
                    for _ in range(64):
                        w = rng.choice(WORDS)
                        rows.append({"prompt": f"say {w}", "completion": w})
                    write_jsonl(path, rows)
                return path

            def data_path(self, kind):
                return self.split_path("sft")

            def eval_prompts(self):
                return [f"say {w}" for w in WORDS]

            def eval_groups(self, prompts):
                return {}

            def gold_scorer(self):
                return Scorer("echo", gold, 0.0, 1.0, "1 if the answer ends with the prompt's last word", "1")

            def scorers(self):
                return {"echo": self.gold_scorer()}

            def lm_eval_tasks(self):
                return None

            def heldout_pairs(self):
                return []

            def tokenizer_dir(self):
                return get_world("toy").tokenizer_dir()
        ''',
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plugin package built and installed (``pip install --target``) into a site directory."""
    src = tmp_path_factory.mktemp("plugin-src")
    for rel, text in PLUGIN.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text).lstrip())
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, text=True)
    return site


def _cli(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=600)


def test_a_method_and_a_world_from_an_installed_package_list_and_train(plugin_site, tmp_path, tiny_base):
    out = _cli(plugin_site, "methods")
    assert out.returncode == 0, out.stderr
    assert "demo-sft" in out.stdout
    out = _cli(plugin_site, "worlds")
    assert out.returncode == 0, out.stderr
    assert "echo" in out.stdout and "repeat the last word" in out.stdout
    out = _cli(plugin_site, "run", "method=demo-sft", "method.scale=2.0", "data=echo", "model=toy:tiny",
               f"output_dir={tmp_path}", "name=plug", "train.max_steps=3", "train.batch_size=4",
               "train.progress=false", "tracking.mode=disabled", "eval.num_prompts=4", "eval.kl_samples=0",
               "eval.max_new_tokens=4")
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    summary = json.loads((tmp_path / "plug" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["method"] == "demo-sft"
    # evaluated by the plugin world's own gold scorer
    assert summary["eval"]["gold_scorer"] == "echo@1" and 0.0 <= summary["eval"]["gold_reward_mean"] <= 1.0
    # without the package the method is unknown, with a hint
    bare = subprocess.run([sys.executable, "-m", "harness.cli", "run", "method=demo-sft"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert bare.returncode == 2 and "unknown method 'demo-sft'" in bare.stderr
