"""`make scaffold` through the helpers CLI: the adapter where upstream keeps it, and bad input
(unknown FROM, a root that is not a git work tree, a file that would be overwritten) as one
line, exit 2, nothing written. Roots are local git work trees (tests/fixtures); vLLM is not
imported (the installed registry.py is read as text)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.adapt import newarch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

from ascend_standin import git, make_standin  # noqa: E402
from fake_roots import make_roots  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return newarch.generate(tmp_path_factory.mktemp("ckpt") / "tiny-new")


def scaffold(checkpoint: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(REPO), MODEL=str(checkpoint), RUNS_DIR=str(tmp_path / "runs"), **env)
    return subprocess.run([sys.executable, "-m", "helpers", "scaffold"], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=120)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def test_the_adapter_goes_into_vllm_ascend_with_its_registration(checkpoint, tmp_path):
    root = make_standin(tmp_path / "vllm-ascend")
    done = scaffold(checkpoint, tmp_path, VLLM_ASCEND_SRC=str(root))
    assert done.returncode == 0, done.stderr
    adapter = root / "vllm_ascend/models/tinynew.py"
    text = adapter.read_text()
    ast.parse(text)
    assert "from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM" in text
    assert '"transformer": "model"' in text and "class TinyNewForCausalLM(Qwen2ForCausalLM)" in text
    init = (root / "vllm_ascend/models/__init__.py").read_text()
    tree = ast.parse(init)
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "register_model")
    assert "vllm_ascend.models.tinynew:TinyNewForCausalLM" in ast.unparse(function)
    assert sorted(line.split()[-1] for line in git(root, "status", "--short").splitlines()) == \
        ["vllm_ascend/models/__init__.py", "vllm_ascend/models/tinynew.py"]
    assert "next: make keymap" in done.stdout
    again = scaffold(checkpoint, tmp_path, VLLM_ASCEND_SRC=str(root))  # a file that would be overwritten
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr and adapter.read_text() == text


def test_the_vllm_root_gets_a_module_and_a_registry_entry(checkpoint, tmp_path):
    vllm, _ascend = make_roots(tmp_path)
    done = scaffold(checkpoint, tmp_path, VLLM_SRC=str(vllm), ADAPTER_ROOT="vllm", FROM="LlamaForCausalLM")
    assert done.returncode == 0, done.stderr
    adapter = (vllm / "vllm/model_executor/models/tinynew.py").read_text()
    assert "from .llama import LlamaForCausalLM" in adapter
    registry = (vllm / "vllm/model_executor/models/registry.py").read_text()
    assert '"TinyNewForCausalLM": ("tinynew", "TinyNewForCausalLM"),' in registry
    ast.parse(registry)


@pytest.mark.parametrize("env, words", [
    ({"FROM": "NoSuchForCausalLM"}, "FROM=NoSuchForCausalLM is not an architecture"),
    ({"VLLM_ASCEND_SRC": "{plain}"}, "is not a git work tree"),
    ({"ADAPTER_ROOT": "elsewhere"}, "ADAPTER_ROOT='elsewhere' is unknown"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, tmp_path, env, words):
    root = make_standin(tmp_path / "vllm-ascend")
    plain = tmp_path / "plain"
    plain.mkdir()
    env = {"VLLM_ASCEND_SRC": str(root)} | {k: v.format(plain=plain) for k, v in env.items()}
    before, plain_before = snapshot(root), snapshot(plain)
    done = scaffold(checkpoint, tmp_path, **env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr and "Traceback" not in done.stderr
    assert snapshot(root) == before and snapshot(plain) == plain_before
