"""Every replay scenario file: loads, cites its sources (first line and every block), uses only
known condition keys, fills every template, reaches ready / exit / hang, and starts in 1-5 s."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers.replay.invocation import CONDITION_KEYS, Invocation
from helpers.replay.player import Pace, Player
from helpers.replay.scenario import SCENARIO_DIR, VERSION_KEYS, Scenario, available, load, machines

NAMES = available()
SOURCE = re.compile(r"#\d+|@(?:v\d|main)|\w+/\w[\w.-]*#\d+")
PLACEHOLDER = re.compile(r"(?<!\{)\{[a-z_]+(?::[^}]*)?\}(?!\})")
ERAS = {"v0.11.x", "v0.13.x", "v0.2x", "main"}


def argv(tp: int = 1, *flags: str) -> list[str]:
    return ["--model", "/models/m", "--served-model-name", "m", "--max-model-len", "32768",
            "--tensor-parallel-size", str(tp), "--port", "8000", *flags]


def player(scenario: Scenario, args: list[str], env: dict[str, str] | None = None) -> Player:
    inv = Invocation.parse(args, env or {})
    return Player(scenario, inv, Pace.from_scenario(scenario, {"REPLAY_SPEED": "1"}))


def outcome(p: Player) -> str:
    """The first action the startup reaches with these flags: ready, exit or hang."""
    for block in p.active(p.scenario.startup):
        for item in block.items:
            if item.kind in ("ready", "exit", "hang"):
                return item.kind
    return "none"


def conditions(node) -> list[dict]:
    """Every condition mapping in a raw scenario (under `when` keys), nested ones included."""
    found: list[dict] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "when" and isinstance(value, dict):
                found += flatten(value)
            else:
                found += conditions(value)
    elif isinstance(node, list):
        for item in node:
            found += conditions(item)
    return found


def flatten(condition: dict) -> list[dict]:
    result = [condition]
    for key, value in condition.items():
        if key in ("any", "all"):
            for item in value:
                result += flatten(item)
        elif key == "not":
            result += flatten(value)
    return result


def test_there_is_a_scenario_per_era_and_the_required_kinds():
    eras = {load(name).era for name in NAMES}
    assert ERAS <= eras, eras
    for needed in ("false-ready", "hang", "oom", "hccl-timeout", "stream-exhaustion", "vl"):
        assert any(needed in name for name in NAMES), needed


@pytest.mark.parametrize("name", NAMES)
def test_scenario_loads_and_cites_its_sources(name):
    path = SCENARIO_DIR / f"{name}.yaml"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# Sources:") and SOURCE.search(first), first
    scenario = load(name)
    assert scenario.era in ERAS
    for block in scenario.all_blocks():
        assert SOURCE.search(block.source) or "vLLM" in block.source or "uvicorn" in block.source, \
            f"{name}/{block.id}: {block.source}"
    for rule in scenario.requests:
        assert rule.source
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for condition in conditions(raw):
        assert set(condition) <= set(CONDITION_KEYS), f"{name}: {sorted(condition)}"


@pytest.mark.parametrize("name", NAMES)
def test_box_facts_are_complete_and_match_the_machine(name):
    scenario = load(name)
    box = scenario.box
    assert set(VERSION_KEYS) <= set(box["versions"]), box["versions"]
    machine = machines()[box["machine"]]
    assert machine["npu_smi"].startswith("+---") and "npu-smi" in machine["npu_smi"]
    assert box["soc_version"] == machine["soc_version"]
    assert box["markers"] and box["modules"] and box["source"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["plain", "eager", "ep-tp2"])
def test_templates_are_filled_for_common_flag_sets(name, variant):
    args = {"plain": argv(), "eager": argv(1, "--enforce-eager"),
            "ep-tp2": argv(2, "--enable-expert-parallel")}[variant]
    p = player(load(name), args)
    for block in p.scenario.all_blocks():
        for item in block.items:
            if item.kind == "template":
                text = p.render(item)
                assert not PLACEHOLDER.search(text), f"{block.id}: {text[:200]}"


@pytest.mark.parametrize("name", NAMES)
def test_startup_reaches_an_outcome_and_a_healthy_start_takes_1_to_5_s(name):
    scenario = load(name)
    p = player(scenario, argv(2, "--enable-expert-parallel"), {"TORCHDYNAMO_DISABLE": "1"})
    reached = outcome(p)
    assert reached in ("ready", "exit", "hang"), f"{name}: startup never ends"
    if reached == "ready":
        assert 1.0 <= p.planned_seconds(scenario.startup) <= 5.0, p.planned_seconds(scenario.startup)


def test_conditions_react_as_documented():
    scenario = load("v0.23-deepseek-v3")
    fc1 = ["--additional-config", '{"enable_flashcomm1":true}']
    assert outcome(player(scenario, argv(1, *fc1))) == "exit"
    assert outcome(player(scenario, argv(2, *fc1))) == "exit"  # MoE without EP
    assert outcome(player(scenario, argv(2, *fc1, "--enable-expert-parallel"))) == "ready"
    too_long = player(load("v0.11-qwen3-8b"), ["--model", "m", "--max-model-len", "128K"])
    assert too_long.max_model_len == 131072 and not too_long.budget_fits and outcome(too_long) == "exit"
    assert outcome(player(load("v0.11-hccl-init-hang"), argv())) == "hang"


def test_every_scenario_file_is_listed_under_its_own_name():
    for path in Path(SCENARIO_DIR).glob("*.yaml"):
        assert load(path.stem).name == path.stem
