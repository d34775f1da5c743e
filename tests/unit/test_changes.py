"""`make changes` on two git work trees shaped like the implementation roots (tests/fixtures/
fake_roots.py: a vLLM registry.py, vllm-ascend's register_model() calls): the engineer adds a model
adapter, registers it, breaks a Python file, patches the backend; the step names every file as the
workflow does, compiles them, reads the registration from the source and records changes.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_env, run_cli, run_make
from helpers import changes
from tests.fixtures.fake_roots import git, make_roots, model_dir, register, write


@pytest.fixture
def roots(tmp_path):
    return make_roots(tmp_path / "roots")


def env_for(runs_dir: Path, vllm: Path, ascend: Path, model: Path, **extra: str) -> dict[str, str]:
    return base_env(runs_dir, MODEL=str(model), VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend), **extra)


def by_path(record: dict) -> dict[str, dict]:
    return {f"{f['root']}:{f['path']}": f for f in record["files"]}


def test_make_changes_classifies_compiles_and_checks_the_registry(tmp_path, runs_dir, roots):
    """The acceptance test of issue 14: a model file added, registered, a broken Python file."""
    vllm, ascend = roots
    model = model_dir(tmp_path / "models", "Foo-7B", "FooForCausalLM")
    write(vllm, "vllm/model_executor/models/foo.py", "class FooForCausalLM:\n    def forward(self):\n        return 1\n")
    register(vllm, "FooForCausalLM", "foo")
    broken = write(vllm, "vllm/model_executor/models/foo_layers.py", "def rope(x:\n    return x\n")
    write(vllm, "vllm/transformers_utils/processors/foo.py", "class FooProcessor:\n    pass\n")
    write(vllm, "vllm/transformers_utils/configs/configuration_foo.py",
          "from transformers import PretrainedConfig\n\n\nclass FooConfig(PretrainedConfig):\n    model_type = 'foo'\n")
    write(vllm, "setup.py", "print('touched by accident')\n")
    write(ascend, "vllm_ascend/ops/rotary_embedding.py", "def rope(x):\n    return x * 1\n")

    result = run_make("changes", env_for(runs_dir, vllm, ascend, model))
    assert result.returncode == 2, result.stdout + result.stderr  # make's own code for a recipe's exit 1
    assert "Error 1" in result.stderr
    # the py_compile failure: one line, file:line: message
    assert f"{broken}:1: SyntaxError:" in result.stdout
    record = json.loads((runs_dir / "Foo-7B" / "changes.json").read_text())
    assert record["schema"] == 1 and record["verdict"] == "FAIL" and record["model"] == "Foo-7B"
    assert record["architectures"] == ["FooForCausalLM"]
    files = by_path(record)
    kinds = {key: f["kind"] for key, f in files.items()}
    assert kinds == {
        "vllm:vllm/model_executor/models/foo.py": "model-adapter",
        "vllm:vllm/model_executor/models/foo_layers.py": "model-adapter",
        "vllm:vllm/model_executor/models/registry.py": "registry",
        "vllm:vllm/transformers_utils/processors/foo.py": "processor",
        "vllm:vllm/transformers_utils/configs/configuration_foo.py": "copied-modeling",
        "vllm:setup.py": "other",
        "vllm-ascend:vllm_ascend/ops/rotary_embedding.py": "backend-patch",
    }
    assert files["vllm:setup.py"]["minimal"] is False
    assert all(f["minimal"] for key, f in files.items() if key != "vllm:setup.py")
    assert files["vllm:vllm/model_executor/models/foo.py"]["status"] == "??"
    assert files["vllm:vllm/model_executor/models/registry.py"]["status"] == "M"
    assert (files["vllm:vllm/model_executor/models/registry.py"]["added"],
            files["vllm:vllm/model_executor/models/registry.py"]["removed"]) == (1, 0)
    assert files["vllm:vllm/model_executor/models/foo.py"]["py_compile"] == "ok"
    assert files["vllm:vllm/model_executor/models/foo_layers.py"]["py_compile"].startswith(f"{broken}:1: SyntaxError")
    assert record["problems"] == [files["vllm:vllm/model_executor/models/foo_layers.py"]["py_compile"]]
    # the registry is read from the source: registered, with the line of the entry
    assert record["registry"]["registered"] == {"FooForCausalLM": True}
    line = next(n for n, text in enumerate((vllm / "vllm/model_executor/models/registry.py").read_text().splitlines(), 1)
                if '"FooForCausalLM"' in text)
    assert record["registry"]["where"] == {"FooForCausalLM": f"vllm/model_executor/models/registry.py:{line}"}
    assert "setup.py" in " ".join(record["warnings"])  # flagged as outside the minimal set
    assert "(outside the minimal set)" in result.stdout
    # the roots and the diff stat the report shows
    assert record["roots"]["vllm"]["head"] == git(vllm, "rev-parse", "HEAD").strip() == record["roots"]["vllm"]["base"]
    assert record["roots"]["vllm"]["dirty"] is True and record["roots"]["vllm-ascend"]["branch"] == "main"
    assert "6 files changed" in record["diffstat"]["vllm"]
    assert "rotary_embedding.py" in record["diffstat"]["vllm-ascend"]


def test_fixed_file_passes_and_committed_changes_stay_listed_against_the_base(tmp_path, runs_dir, roots):
    vllm, ascend = roots
    model = model_dir(tmp_path / "models", "Foo-7B", "FooForCausalLM")
    write(vllm, "vllm/model_executor/models/foo.py", "class FooForCausalLM:\n    pass\n")
    register(vllm, "FooForCausalLM", "foo")
    env = env_for(runs_dir, vllm, ascend, model)
    first = run_cli(["changes"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    base = json.loads((runs_dir / "Foo-7B" / "changes.json").read_text())["roots"]["vllm"]["base"]
    git(vllm, "add", "-A")
    git(vllm, "commit", "-q", "-m", "[Model] Foo")
    second = run_cli(["changes", "--json"], env)
    assert second.returncode == 0, second.stderr
    record = json.loads(second.stdout)
    assert record["roots"]["vllm"]["base"] == base != record["roots"]["vllm"]["head"]
    assert record["roots"]["vllm"]["dirty"] is False
    files = by_path(record)
    assert files["vllm:vllm/model_executor/models/foo.py"]["status"] == "A"
    assert files["vllm:vllm/model_executor/models/foo.py"]["uncommitted"] is False
    assert record["verdict"] == "PASS"


def test_an_unregistered_architecture_or_a_registry_typo_fails(tmp_path, runs_dir, roots):
    vllm, ascend = roots
    model = model_dir(tmp_path / "models", "Bar-7B", "BarForCausalLM")
    result = run_cli(["changes", "--json"], env_for(runs_dir, vllm, ascend, model))
    assert result.returncode == 1
    record = json.loads(result.stdout)
    assert record["registry"]["registered"] == {"BarForCausalLM": False}
    assert any("BarForCausalLM (config.json architectures) is not registered" in p for p in record["problems"])
    register(vllm, "BarForCausalLM", "barr")  # a typo: there is no barr.py
    record = json.loads(run_cli(["changes", "--json"], env_for(runs_dir, vllm, ascend, model)).stdout)
    assert record["registry"]["registered"] == {"BarForCausalLM": True}
    assert any("vllm/model_executor/models/barr.py does not exist" in p for p in record["problems"])


def test_vllm_ascend_registration_counts_and_copied_modeling_is_found_by_content(tmp_path, runs_dir, roots):
    vllm, ascend = roots
    model = model_dir(tmp_path / "models", "DSV32", "DeepseekV32ForCausalLM")
    write(vllm, "vllm/model_executor/models/dsv32_hf.py",
          "from transformers.modeling_utils import PreTrainedModel\n\n\nclass X(PreTrainedModel):\n    pass\n")
    record = json.loads(run_cli(["changes", "--json"], env_for(runs_dir, vllm, ascend, model)).stdout)
    assert record["registry"]["registered"] == {"DeepseekV32ForCausalLM": True}
    assert record["registry"]["where"]["DeepseekV32ForCausalLM"] == "vllm_ascend/models/__init__.py:6"
    assert by_path(record)["vllm:vllm/model_executor/models/dsv32_hf.py"]["kind"] == "copied-modeling"


def test_no_implementation_root_is_an_environment_problem(tmp_path, runs_dir):
    model = model_dir(tmp_path / "models", "Foo-7B", "FooForCausalLM")
    result = run_cli(["changes"], env_for(runs_dir, tmp_path / "nope", tmp_path / "nope2", model))
    assert result.returncode == 3
    assert result.stderr.strip().startswith("error: neither VLLM_SRC nor VLLM_ASCEND_SRC is a git work tree")
    assert "Traceback" not in result.stderr


def test_globs_and_rules_data():
    assert changes.glob_regex("vllm/model_executor/models/**").match("vllm/model_executor/models/a/b.py")
    assert changes.glob_regex("**/modeling_*.py").match("modeling_x.py")
    assert not changes.glob_regex("tests/e2e/models/configs/*.yaml").match("tests/e2e/models/configs/a/b.yaml")
    rules, registry = changes.load_rules()
    assert {r.kind for r in rules} <= set(changes.KINDS) and set(registry) == {"vllm", "vllm-ascend"}


def test_the_base_is_the_head_the_first_recorded_context_saw(tmp_path, runs_dir, roots):
    """Code committed in a root after the model's first run is still the model's change."""
    vllm, ascend = roots
    model = model_dir(tmp_path / "models", "Foo-7B", "FooForCausalLM")
    env = env_for(runs_dir, vllm, ascend, model)
    first_head = git(vllm, "rev-parse", "HEAD").strip()
    assert run_cli(["context"], env).returncode == 0  # the first run records the roots' HEAD
    write(vllm, "vllm/model_executor/models/foo.py", "class FooForCausalLM:\n    pass\n")
    register(vllm, "FooForCausalLM", "foo")
    git(vllm, "add", "-A")
    git(vllm, "commit", "-q", "-m", "[Model] Foo")
    record = json.loads(run_cli(["changes", "--json"], env).stdout)
    assert record["roots"]["vllm"]["base"] == first_head
    assert record["roots"]["vllm"]["base_source"] == "the first recorded context of this model"
    assert set(by_path(record)) == {"vllm:vllm/model_executor/models/foo.py", "vllm:vllm/model_executor/models/registry.py"}
    assert record["verdict"] == "PASS"
