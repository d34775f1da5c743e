"""The vllm-ascend e2e accuracy config (tests/e2e/models/configs/<Model>.yaml): its schema,
the `serve:` block read from a recorded serve command, and the config itself as data, rendered
through templates/e2e_config.yaml.j2 and checked to round-trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from helpers import load_yaml
from helpers.errors import UsageError
from helpers.settings import parse_length
from helpers.templating import render

E2E_SCHEMA = Path(__file__).resolve().parent / "e2e_schema.yaml"
# Where the deliverables go inside a vllm-ascend checkout (and under deliverables/, mirrored).
E2E_DIR = "tests/e2e/models/configs"
TUTORIAL_DIR = "docs/source/tutorials/models"
# Under RUNS_DIR/<model>/: the record of the commit `make deliver` made, and the vLLM root's
# changes, which cannot go into a vllm-ascend repository, as a patch.
DELIVER_RECORD = "deliverables/deliver.json"
VLLM_PATCH = "deliverables/vllm-changes.patch"

# serve flags -> keys of the e2e YAML `serve:` block (ascend-facts.md section 5), with a type.
SERVE_FLAGS: dict[str, tuple[str, str]] = {
    "--tensor-parallel-size": ("tensor_parallel_size", "int"),
    "--max-model-len": ("max_model_len", "length"),
    "--gpu-memory-utilization": ("gpu_memory_utilization", "float"),
    "--enable-expert-parallel": ("enable_expert_parallel", "flag"),
    "--enforce-eager": ("enforce_eager", "flag"),
    "--quantization": ("quantization", "str"),
    "--trust-remote-code": ("trust_remote_code", "flag"),
    "--dtype": ("dtype", "str"),
}


def serve_block(argv: list[str]) -> dict[str, Any]:
    """The serve options of a recorded argv that the e2e YAML's `serve:` block knows."""
    block: dict[str, Any] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        flag, _, inline = arg.partition("=")
        if flag in SERVE_FLAGS:
            key, kind = SERVE_FLAGS[flag]
            if kind == "flag":
                block[key] = True
            else:
                value = inline if inline else (argv[index + 1] if index + 1 < len(argv) else "")
                if not inline:
                    index += 1
                block[key] = {"int": int, "float": float, "length": parse_length, "str": str}[kind](value)
        index += 1
    return block


def load_e2e_schema() -> dict[str, Any]:
    return load_yaml(E2E_SCHEMA.read_text(encoding="utf-8"))


def validate_e2e_config(data: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Problems of an e2e accuracy config against the schema of ascend-facts.md section 5."""
    schema = schema or load_e2e_schema()
    types = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "map": dict}

    def is_type(value: Any, name: str | list[str]) -> bool:
        names = name if isinstance(name, list) else [name]
        for n in names:
            if n in ("int", "float") and isinstance(value, bool):
                continue
            if isinstance(value, types[n]):
                return True
        return False

    problems: list[str] = []
    if not isinstance(data, dict):
        return ["the config is not a mapping"]
    keys = schema["keys"]
    for key in data:
        if key not in keys:
            problems.append(f"unknown key {key!r}")
    for key, spec in keys.items():
        if key not in data:
            if spec.get("required"):
                problems.append(f"missing required key {key!r}")
            continue
        value = data[key]
        if not is_type(value, spec["type"]):
            problems.append(f"{key}: {value!r} is not {spec['type']}")
            continue
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"{key}: {value!r} is not one of {spec['enum']}")
    for name, value in (data.get("serve") or {}).items() if isinstance(data.get("serve"), dict) else []:
        spec = schema["serve"].get(name)
        if spec is None:
            problems.append(f"serve.{name}: unknown serve option")
        elif not is_type(value, spec):
            problems.append(f"serve.{name}: {value!r} is not {spec}")
    tasks = data.get("tasks")
    if isinstance(tasks, list):
        if not tasks:
            problems.append("tasks: empty")
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("name"), str):
                problems.append(f"tasks[{index}]: needs a name")
                continue
            metrics = task.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"tasks[{index}] {task['name']}: needs a non-empty metrics list")
                continue
            for metric in metrics:
                if not (isinstance(metric, dict) and isinstance(metric.get("name"), str)
                        and is_type(metric.get("value"), "float")):
                    problems.append(f"tasks[{index}] {task['name']}: metric {metric!r} needs name and numeric value")
            extra = set(task) - {"name", "metrics"}
            if extra:
                problems.append(f"tasks[{index}] {task['name']}: unknown keys {sorted(extra)}")
    return problems


def hardware_label(series: str | None) -> str | None:
    text = (series or "").upper()
    for tag in ("A3", "A2"):
        if tag in text:
            return f"Atlas {tag} Series"
    return None


def e2e_config(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """The e2e accuracy config as data (None without a passing accuracy run)."""
    acc = ctx["accuracy"]
    if not acc["present"] or acc["verdict"] != "PASS" or not acc["tasks"]:
        return None
    config: dict[str, Any] = {"model_name": ctx["model_id"]}
    if ctx["hardware"]:
        config["hardware"] = ctx["hardware"]
    if ctx["multimodal"]:
        config["model_type"] = "vllm-vlm"
    config["tasks"] = [{"name": t["name"], "metrics": [{"name": m["name"], "value": m["value"]}
                                                       for m in t["metrics"]
                                                       if isinstance(m["value"], (int, float))]}
                       for t in acc["tasks"]]
    shots = {t["num_fewshot"] for t in acc["tasks"] if t["num_fewshot"] is not None}
    if len(shots) == 1:
        config["num_fewshot"] = shots.pop()
    config["apply_chat_template"] = bool(acc["apply_chat_template"])
    config["fewshot_as_multiturn"] = bool(acc["fewshot_as_multiturn"])
    limits = {t["limit"] for t in acc["tasks"] if t["limit"] is not None}
    if len(limits) == 1:
        config["limit"] = limits.pop()
    serve = dict(ctx["serve_block"] or acc["serve"])
    if serve:
        config["serve"] = serve
    return config


def render_e2e_yaml(config: dict[str, Any]) -> str:
    problems = validate_e2e_config(config)
    if problems:
        raise UsageError(f"the e2e config would not validate: {'; '.join(problems)}",
                         "fix accuracy.json (rerun `make accuracy`) before `make report`")
    text = render("e2e_config.yaml.j2", c=config)
    loaded = load_yaml(text)
    if loaded != config:
        raise UsageError("the e2e YAML does not round-trip to the data it was rendered from",
                         "report this as a bug of templates/e2e_config.yaml.j2")
    return text


