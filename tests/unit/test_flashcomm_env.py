"""The flashcomm1 state a box's environment carries into a run (helpers/flashcomm_env.py), and a
base run that unsets it where the installed vllm-ascend honours it. Pure facts, plus a StageRun
on the replay backend constructed but not started (no server)."""

from __future__ import annotations

import pytest


from helpers import flashcomm_env, settings
from helpers.model import resolve
from helpers.plan import Variant
from helpers.stage import StageRequest, StageRun


@pytest.mark.parametrize("version, value, on, honoured", [
    ("0.13.0", "1", True, True),                         # the env switch (fact flashcomm1-switch-env)
    ("0.23.0", "1", True, True),                         # the deprecated fallback (0.20.2rc1-0.26)
    ("0.13.0", "0", False, True),                        # exported but off
    ("0.10.0rc1", "1", False, False),                    # before the variable existed
    ("0.0.0", "1", True, None),                          # unknown build: may be honoured
])
def test_which_exported_values_turn_flashcomm1_on(version, value, on, honoured):
    found = flashcomm_env.state({"VLLM_ASCEND_ENABLE_FLASHCOMM1": value}, version)
    assert (found["on"] == ["VLLM_ASCEND_ENABLE_FLASHCOMM1"]) is on
    assert found["honoured"]["VLLM_ASCEND_ENABLE_FLASHCOMM1"] is honoured


def _run(tmp_path, tiny_dense, monkeypatch, variant: Variant | None = None) -> StageRun:
    loaded = settings.load({"MODEL": str(tiny_dense), "BACKEND": "replay", "RUNS_DIR": str(tmp_path / "runs")})
    monkeypatch.setenv("REPLAY_SCENARIO", "v0.13-qwen3-30b-a3b")
    monkeypatch.setenv("VLLM_ASCEND_ENABLE_FLASHCOMM1", "1")
    request = StageRequest(step="stage-b", stage="b", variant=variant or Variant())
    return StageRun(loaded, resolve(loaded), request, out=lambda _l: None)


def test_a_base_run_unsets_an_exported_flashcomm1_and_says_so(tmp_path, tiny_dense, monkeypatch):
    run = _run(tmp_path, tiny_dense, monkeypatch)
    assert "VLLM_ASCEND_ENABLE_FLASHCOMM1" not in run.plan.process_env({"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"})
    assert "unset VLLM_ASCEND_ENABLE_FLASHCOMM1" in run.plan.command_sh("h")
    assert run.flashcomm1_env["unset"] is True and run.flashcomm1_env["variables"] == {"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}
    assert any(w.startswith("flashcomm1: the environment exports VLLM_ASCEND_ENABLE_FLASHCOMM1=1;") for w in run.warnings)


def test_a_feature_run_keeps_it_and_records_it(tmp_path, tiny_dense, monkeypatch):
    run = _run(tmp_path, tiny_dense, monkeypatch, Variant("flashcomm1", [], {"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}))
    assert run.plan.process_env({})["VLLM_ASCEND_ENABLE_FLASHCOMM1"] == "1"
    assert run.flashcomm1_env["unset"] is False and run.flashcomm1_env["on"] == ["VLLM_ASCEND_ENABLE_FLASHCOMM1"]
