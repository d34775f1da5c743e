"""The shape of helpers/ itself: layers without cycles, modules of a readable size, and rules
data whose every field some code reads (a YAML key nobody reads is a fact that silently does
nothing)."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from helpers import changes, features, profiles

HELPERS = Path(__file__).resolve().parents[2] / "helpers"

# Lower layers never import higher ones; steps never import each other (only their own parts).
LAYERS = {
    "data": {"errors", "settings", "evidence", "box", "templating", "checkpoint", "profiles", "model", "plan",
             "logscan", "features", "junit", "tinymodel", "e2e", "runs", "parallel", "triage_view", "coverage",
             "render_signatures", "catalog", "ascend_facts", "logline", "diagnosis",
             "sourcetree", "npus", "layers", "hf_id", "gitrepo", "changeset"},
    "server": {"serve", "readiness", "smoke", "lifecycle", "loadgen", "registry"},
    "engine": {"stage", "triage", "context"},
    "steps": {"gates", "ladder", "matrix", "capacity", "capacity_cell", "accuracy", "render", "render_inputs",
              "changes", "changes_registry", "status"},
    "entry": {"cli", "__main__", "__init__"},
}
ORDER = list(LAYERS)
MAX_LINES = 460
# issue 13: the graph-mode rules (data) and a run's defaults from triage (engine)
LAYERS["data"] |= {"graphmode"}
LAYERS["engine"] |= {"defaults"}
# issue 22: the log scan searches all runtime gates in one pass
LAYERS["data"] |= {"multifind"}
# issue 21: which build is installed (a release, or a source build placed by its root's git state)
LAYERS["data"] |= {"ascend_build", "flashcomm_env"}
LAYERS["steps"] |= {"reset_roots"}
# the "where am I" commands beside the main CLI group; the graph-mode part of a stage run
LAYERS["engine"] |= {"stage_graph"}
LAYERS["entry"] |= {"cli_where"}


def modules() -> dict[str, Path]:
    return {p.stem: p for p in HELPERS.glob("*.py")}


def imports_of(path: Path) -> set[str]:
    """helpers modules imported anywhere in the file (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "helpers":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("helpers."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("helpers."))
    return found & set(modules())


def layer_of(name: str) -> str:
    return next(layer for layer, names in LAYERS.items() if name in names)


def test_every_module_has_a_layer():
    unplaced = sorted(set(modules()) - set().union(*LAYERS.values()))
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_imports_go_down_the_layers_and_steps_do_not_import_steps():
    wrong = []
    for name, path in modules().items():
        for target in imports_of(path):
            here, there = layer_of(name), layer_of(target)
            own_part = target.startswith(name + "_")  # capacity_cell is part of the capacity step
            if ORDER.index(there) > ORDER.index(here) or (here == there == "steps" and not own_part):
                wrong.append(f"{name} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(path) - {name} for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# logscan.py is being reworked for real Ascend logs (issue 12); it is split when that lands.
PENDING_SPLIT: set[str] = set()


@pytest.mark.parametrize("name", sorted(set(modules()) - PENDING_SPLIT))
def test_modules_stay_readable(name):
    lines = modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"helpers/{name}.py has {lines} lines: split it by concern"


RULE_CLASSES = [features.FeatureRule, features.VersionRule, features.GateSpec, features.Rung, profiles.Profile,
                changes.KindRule]


@pytest.mark.parametrize("cls", RULE_CLASSES, ids=lambda c: c.__name__)
def test_every_rules_field_is_read_by_code(cls):
    """Loaders refuse unknown keys; here every known key must also be read somewhere."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in HELPERS.rglob("*.py"))  # subpackages too
    unread = [f.name for f in dataclasses.fields(cls) if not re.search(rf"\.{f.name}\b(?!\s*=[^=])", sources)]
    assert not unread, f"{cls.__name__} fields no code reads: {unread}"


def test_unknown_rules_keys_are_refused(tmp_path):
    broken = tmp_path / "gates.yaml"
    broken.write_text("gates:\n  ep:\n    feature: ep\n    evidence_patterns: ['x']\n")
    with pytest.raises(features.UsageError, match="unknown key"):
        features.load_specs(broken)
