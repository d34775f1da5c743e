"""Golden serve commands per backend profile: what a person would type on each box."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from helpers import profiles
from helpers.errors import UsageError
from helpers.plan import Variant, build_plan


def plan_for(backend: str, stage: str = "a", **kwargs):
    defaults = dict(model_path="/models/Qwen3-8B", served_name="Qwen3-8B", stage=stage, host="127.0.0.1",
                    port=8000, python="/venv/bin/python")
    defaults.update(kwargs)
    return build_plan(profiles.load(backend), **defaults)


def test_ascend_stage_a_matches_the_workflow_template():
    plan = plan_for("ascend", tp=8, max_model_len=32768)
    assert plan.shell_line() == (
        "HCCL_OP_EXPANSION_MODE=AIV vllm serve /models/Qwen3-8B "
        "--served-model-name Qwen3-8B --trust-remote-code --dtype bfloat16 --max-model-len 32768 "
        "--tensor-parallel-size 8 --max-num-seqs 16 --load-format dummy --host 127.0.0.1 --port 8000"
    )


def test_ascend_stage_b_drops_dummy_only():
    a, b = plan_for("ascend", "a"), plan_for("ascend", "b")
    assert "--load-format" not in b.argv
    assert [x for x in a.argv if x not in ("--load-format", "dummy")] == b.argv


def test_cuda_profile_uses_vllm_serve_without_ascend_env():
    plan = plan_for("cuda", "b")
    assert plan.argv[:3] == ["vllm", "serve", "/models/Qwen3-8B"]
    assert plan.env == {}


def test_cpu_profile_starts_the_server_module_with_cpu_env():
    plan = plan_for("cpu", "b", served_name="tiny")
    assert plan.argv[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
                             "/models/Qwen3-8B"]
    assert plan.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_USE_AOT_COMPILE": "0"}
    assert plan.argv[plan.argv.index("--max-num-seqs") + 1] == "4"


def test_variant_and_extra_args_come_last_and_split_like_a_shell():
    plan = plan_for("ascend", "b", variant=Variant("eager", ["--enforce-eager"], {"TORCHDYNAMO_DISABLE": "1"}),
                    extra_args="--hf-overrides '{\"num_hidden_layers\": 2}' --seed 1")
    assert plan.argv[-5:] == ["--enforce-eager", "--hf-overrides", '{"num_hidden_layers": 2}', "--seed", "1"]
    assert plan.env["TORCHDYNAMO_DISABLE"] == "1"


def test_unbalanced_extra_args_is_bad_input():
    with pytest.raises(UsageError, match="EXTRA_ARGS"):
        plan_for("cpu", extra_args="--x 'unterminated")


def test_command_sh_reproduces_argv_exactly_and_never_holds_the_key(tmp_path):
    plan = plan_for("ascend", "b", served_name="名字 with space; $(touch pwned)", api_key="sk-secret-123",
                    extra_args="--x '$(rm -rf /)'")
    text = plan.command_sh("header")
    assert "sk-secret-123" not in text
    assert 'VLLM_API_KEY="${VLLM_API_KEY:?' in text
    script = tmp_path / "command.sh"
    # Replace exec with a printer of argv to see what the shell would really run.
    assert "\ncd /workspace\n" in text  # the workflow's work dir, kept even where it is missing
    script.write_text(text.replace("exec vllm", "printf '%s\\n' vllm").replace("cd /workspace", f"cd {tmp_path}"))
    out = subprocess.run(["bash", str(script)], env={"VLLM_API_KEY": "x", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.splitlines() == plan.argv
    assert not (tmp_path / "pwned").exists()
    words = shlex.split(plan.shell_line())
    assert words[words.index("vllm"):] == plan.argv  # after the profile's env assignments


def test_unknown_backend_is_bad_input():
    with pytest.raises(UsageError, match="BACKEND='tpu' is unknown"):
        profiles.load("tpu")
