"""Feature gates without a real server: decisions from real triage of generated checkpoints
(no server is started for a no-run verdict), version-aware flashcomm1 decisions, golden Ascend
command lines for every target, and the post-run feature-evidence rule against log fixtures built
from real vLLM / vllm-ascend strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, base_env, run_cli, run_make
from helpers import features, gates, profiles, tinymodel, triage
from helpers import model as model_module
from helpers.plan import Variant, build_plan
from helpers.verdict import proof

ASCEND_LOGS = REPO / "tests/fixtures/logs/ascend"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-models")
    return {
        "dense": tinymodel.generate(root / "dense", weights="real"),
        "moe": tinymodel.generate(root / "moe", spec=tinymodel.TinySpec(kind="moe")),
        "mtp-config-only": tinymodel.generate(root / "mtp-config-only",
                                              spec=tinymodel.TinySpec(mtp_layers=1, mtp_weights=False)),
        "mtp": tinymodel.generate(root / "mtp", spec=tinymodel.TinySpec(kind="moe", mtp_layers=1)),
    }


def gate_record(runs_dir: Path, model: str, gate: str) -> dict:
    return json.loads((runs_dir / model / f"latest-{gate}" / "evidence.json").read_text())


# --- no-run verdicts from real triage --------------------------------------------------------

def test_dense_model_gets_not_applicable_for_ep_and_flashcomm1_without_a_server(runs_dir, models):
    env = base_env(runs_dir, MODEL=str(models["dense"]))
    result = run_make("ep", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT_APPLICABLE ep dense" in result.stdout and "no server started" in result.stdout
    record = gate_record(runs_dir, "dense", "ep")
    assert record["verdict"] == "NOT_APPLICABLE" and record["server_started"] is False
    assert "no routed experts" in record["reason"]
    assert record["gate"]["triage"]["facts"]["is_moe"] is False
    run_dir = Path(record["run_dir"])
    assert not (run_dir / "serve.log").exists() and not (run_dir / "server.json").exists()
    # The first gate triaged in-process and wrote triage.json; the second reads it.
    assert (runs_dir / "dense" / "triage.json").is_file()
    result = run_cli(["gate", "flashcomm1"], env)
    assert result.returncode == 0, result.stderr
    record = gate_record(runs_dir, "dense", "flashcomm1")
    assert record["verdict"] == "NOT_APPLICABLE" and "MoE models only" in record["reason"]
    assert record["gate"]["triage"]["source"] == "triage.json"
    assert "triaging in-process" not in result.stdout


def test_mtp_config_without_weights_is_checkpoint_missing(runs_dir, models):
    env = base_env(runs_dir, MODEL=str(models["mtp-config-only"]))
    result = run_cli(["gate", "mtp"], env)
    assert result.returncode == 0, result.stderr
    record = gate_record(runs_dir, "mtp-config-only", "mtp")
    assert record["verdict"] == "CHECKPOINT_MISSING"
    assert "num_nextn_predict_layers=1" in record["reason"] and "no MTP layers" in record["reason"]
    assert not (Path(record["run_dir"]) / "serve.log").exists()


def test_mtp_decisions_follow_the_checkpoint(runs_dir, models):
    def decision(model: str) -> gates.GateDecision:
        from helpers import settings as settings_module
        s = settings_module.load({"MODEL": str(models[model]), "RUNS_DIR": str(runs_dir), "BACKEND": "cpu"})
        facts = triage.current_facts(s, model_module.resolve(s), "cpu")
        return gates.decide("mtp", gates.GateContext(facts=facts, runs_dir=runs_dir / model))

    dense = decision("dense")
    assert dense.verdict == "NOT_APPLICABLE" and "declares no num_nextn_predict_layers" in dense.reason
    with_layers = decision("mtp")
    assert with_layers.verdict is None
    assert with_layers.variant.flags == ["--speculative-config", '{"method":"mtp","num_speculative_tokens":1}']


def test_flashcomm1_on_cpu_is_framework_unsupported_for_a_moe(runs_dir, models):
    env = base_env(runs_dir, MODEL=str(models["moe"]))
    result = run_cli(["gate", "flashcomm1"], env)
    assert result.returncode == 0, result.stderr
    record = gate_record(runs_dir, "moe", "flashcomm1")
    assert record["verdict"] == "FRAMEWORK_UNSUPPORTED"
    assert "vllm-ascend" in record["reason"] and "not installed" in record["reason"]


def test_stale_triage_json_is_redone_in_process(runs_dir, models):
    env = base_env(runs_dir, MODEL=str(models["dense"]))
    assert run_cli(["gate", "ep"], env).returncode == 0
    path = runs_dir / "dense" / "triage.json"
    record = json.loads(path.read_text())
    record["parallel"]["backend"] = "ascend"  # made on another box
    path.write_text(json.dumps(record))
    result = run_cli(["gate", "ep"], env)
    assert "it was made for backend ascend" in result.stdout
    assert json.loads(path.read_text())["parallel"]["backend"] == "cpu"


def test_unknown_gate_is_one_line_and_exit_2(runs_dir, models):
    result = run_cli(["gate", "nope"], base_env(runs_dir, MODEL=str(models["dense"])))
    assert result.returncode == 2 and result.stderr.startswith("error: unknown gate 'nope'")
    assert "Traceback" not in result.stderr


# --- flashcomm1 version drift (Ascend decisions from the feature rules) ------------------------

ASCEND_MOE_FACTS = {"backend": "ascend", "graph_expected": True, "is_moe": True, "num_experts": 128,
                    "moe_evidence": "num_experts=128", "is_multimodal": False, "mm_evidence": "",
                    "mtp_config_layers": 0, "mtp_weight_layers": 0, "mtp_status": "not-present",
                    "mtp_evidence": "config declares no num_nextn_predict_layers", "has_weights": True, "tp": 8,
                    "model_type": "qwen3_moe"}


def ascend_context(tmp_path: Path, version: str, source_markers: set[str], facts: dict | None = None) -> gates.GateContext:
    facts = dict(facts or ASCEND_MOE_FACTS)
    versions = {"vllm": "0.13.0", "vllm-ascend": version}

    def probe(package: str, needle: str) -> bool | None:
        return needle in source_markers

    assessments = {a.id: a.to_dict() for a in features.assess_all(
        facts, versions=versions, source_probe=probe, module_probe=lambda _m: True)}
    triage_facts = gates.TriageFacts(facts=facts, assessments=assessments, versions=versions,
                                     source="test", path=None, created_utc=None)
    return gates.GateContext(facts=triage_facts, runs_dir=tmp_path)


def test_flashcomm1_removed_version_is_framework_unsupported_with_the_deprecation_line(tmp_path):
    # A recorded run whose log printed the deprecation (the scanner keeps it in log_evidence).
    line = (ASCEND_LOGS / "main" / "flashcomm-deprecated.log").read_text().splitlines()[1]
    old = tmp_path / "20260801T000000Z-stage-b"
    old.mkdir()
    (old / "evidence.json").write_text(json.dumps({"finished_at": "2026-08-01T00:00:00+00:00",
                                                   "log_evidence": {"deprecated": [line]}}))
    ctx = ascend_context(tmp_path, "0.24.0rc1", {"FlashComm is deprecated", "enable_flashcomm1"})
    decision = gates.decide("flashcomm1", ctx)
    assert decision.verdict == "FRAMEWORK_UNSUPPORTED"
    assert decision.reason.startswith("vllm-ascend 0.24.0rc1: removed on vllm-ascend main")
    assert "FlashComm is deprecated" in decision.evidence_line and str(old) in decision.reason


def test_flashcomm1_modes_by_version(tmp_path):
    config_mode = gates.decide("flashcomm1", ascend_context(tmp_path, "0.20.0", {"enable_flashcomm1"}))
    assert config_mode.verdict is None
    assert config_mode.variant.flags == ["--additional-config", '{"enable_flashcomm1":true}', "--enable-expert-parallel"]
    env_mode = gates.decide("flashcomm1", ascend_context(tmp_path, "0.13.0", {"VLLM_ASCEND_ENABLE_FLASHCOMM1"}))
    assert env_mode.variant.env == {"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}
    assert env_mode.variant.flags == ["--enable-expert-parallel"]
    tp1 = gates.decide("flashcomm1", ascend_context(tmp_path, "0.13.0", {"VLLM_ASCEND_ENABLE_FLASHCOMM1"},
                                                    {**ASCEND_MOE_FACTS, "tp": 1}))
    assert "only supported when tp_size > 1" in tp1.reason


# --- golden Ascend command lines ---------------------------------------------------------------

BASE = ("HCCL_OP_EXPANSION_MODE=AIV vllm serve /models/Qwen3-30B-A3B "
        "--served-model-name Qwen3-30B-A3B --trust-remote-code --dtype bfloat16 --max-model-len 40960 "
        "--tensor-parallel-size 8 --max-num-seqs 16")
TAIL = "--host 127.0.0.1 --port 8000"
GOLDEN = {
    "stage-a": f"{BASE} --load-format dummy {TAIL}",
    "stage-b": f"{BASE} {TAIL}",
    "ep": f"{BASE} {TAIL} --enable-expert-parallel",
    "flashcomm1@0.13": ("HCCL_OP_EXPANSION_MODE=AIV VLLM_ASCEND_ENABLE_FLASHCOMM1=1 vllm serve /models/Qwen3-30B-A3B "
                        "--served-model-name Qwen3-30B-A3B --trust-remote-code --dtype bfloat16 --max-model-len 40960 "
                        f"--tensor-parallel-size 8 --max-num-seqs 16 {TAIL} --enable-expert-parallel"),
    "flashcomm1@0.20": f"{BASE} {TAIL} --additional-config '{{\"enable_flashcomm1\":true}}' --enable-expert-parallel",
    "mtp": f"{BASE} {TAIL} --speculative-config '{{\"method\":\"mtp\",\"num_speculative_tokens\":1}}'",
    "eager": f"{BASE} {TAIL} --enforce-eager",
    "dynamo-fallback": ("HCCL_OP_EXPANSION_MODE=AIV TORCHDYNAMO_DISABLE=1 "
                        "VLLM_USE_AOT_COMPILE=0 vllm serve /models/Qwen3-30B-A3B --served-model-name Qwen3-30B-A3B "
                        "--trust-remote-code --dtype bfloat16 --max-model-len 40960 --tensor-parallel-size 8 "
                        f"--max-num-seqs 16 {TAIL}"),
    "text-only": f"{BASE} {TAIL} --limit-mm-per-prompt '{{\"image\":0,\"video\":0,\"audio\":0}}'",
}


def ascend_line(variant: Variant | None, stage: str = "b") -> str:
    plan = build_plan(profiles.load("ascend"), model_path="/models/Qwen3-30B-A3B", served_name="Qwen3-30B-A3B",
                      stage=stage, host="127.0.0.1", port=8000, tp=8, variant=variant,
                      max_model_len=40960)  # the serve template capped by its max_position_embeddings
    return plan.shell_line()


def test_golden_ascend_command_lines_for_every_target(tmp_path):
    assert ascend_line(None, "a") == GOLDEN["stage-a"]
    assert ascend_line(None, "b") == GOLDEN["stage-b"]
    mtp_facts = {**ASCEND_MOE_FACTS, "mtp_status": "enabled", "mtp_config_layers": 1, "mtp_weight_layers": 1,
                 "is_multimodal": True, "mm_evidence": "vision_config"}
    ctx = ascend_context(tmp_path, "0.13.0", {"VLLM_ASCEND_ENABLE_FLASHCOMM1"}, mtp_facts)
    for gate in ("ep", "mtp", "eager", "dynamo-fallback", "text-only"):
        decision = gates.decide(gate, ctx)
        assert decision.verdict is None, decision.reason
        assert ascend_line(decision.variant) == GOLDEN[gate], gate
    assert ascend_line(gates.decide("flashcomm1", ctx).variant) == GOLDEN["flashcomm1@0.13"]
    ctx20 = ascend_context(tmp_path, "0.20.0", {"enable_flashcomm1"}, mtp_facts)
    assert ascend_line(gates.decide("flashcomm1", ctx20).variant) == GOLDEN["flashcomm1@0.20"]
    # Ladder rungs are the same switches on the base command.
    rungs = {r.id: r.variant for r in features.load_ladder().rungs}
    assert ascend_line(rungs["reproduce"]) == GOLDEN["stage-b"]
    assert ascend_line(rungs["eager"]) == GOLDEN["eager"]
    assert ascend_line(rungs["dynamo-disable"]) == GOLDEN["dynamo-fallback"]
    assert ascend_line(rungs["text-only"]) == GOLDEN["text-only"]
    assert rungs["text-only"].name == "text-only", "the stage runner skips the image request by this name"


# --- the feature-evidence rule after a run ---------------------------------------------------

def passing_record(log: Path, **extra) -> dict:
    return {"verdict": "PASS", "category": None, "reason": "ready", "log_evidence": {}, "log_scan": {},
            "command": {"env": {}}, **extra}


def test_passing_server_without_feature_evidence_fails_the_feature(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("(APIServer pid=1) INFO 11-21 12:00:00 [api_server.py:1] non-default args: {'port': 8000}\n")
    record = passing_record(log)
    proof.apply_feature_check(gates.load_specs()["ep"], record, log)
    assert record["verdict"] == "FAIL" and record["category"] == "feature-not-active"
    assert "ep is not proven" in record["reason"] and "expert_parallel" in record["reason"]


def test_ep_evidence_from_the_scanner_is_recorded_with_its_line(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("x\n")
    # a real v0.13-era line (tests/fixtures/logs/ascend); `EP rank 0` alone is no evidence (test_corpus)
    line = ("(Worker_TP0_EP0 pid=2312) INFO 07-28 01:48:32 [fused_moe.py:221] [EP Rank 0/2] Expert parallelism is "
            "enabled. Local/global number of experts: 2/4. Experts local to global index map: 0->0, 1->1.")
    record = passing_record(log, log_evidence={"expert_parallel": line},
                            log_scan={"evidence_lines": {"expert_parallel": 31}})
    proof.apply_feature_check(gates.load_specs()["ep"], record, log)
    assert record["verdict"] == "PASS"
    assert record["feature_evidence"] == {"key": "expert_parallel", "line": line, "line_no": 31, "level": "took-effect"}


def test_flashcomm1_without_a_runtime_line_is_accepted_not_failed(tmp_path):
    """0.24-0.26 print no runtime line for any model, 0.11-0.23 only for MoE with shared experts:
    a working run says "accepted, no runtime evidence" (from the config line, or in the env era
    from the variable in the server's environment): its own state ACCEPTED, neither FAIL nor PASS."""
    log = tmp_path / "serve.log"
    accepted = ("(APIServer pid=2323740) INFO 09-17 09:04:39 [ascend_config.py:286] AscendConfig.enable_flashcomm1 "
                "is set from additional_config with value True.")
    log.write_text(accepted + "\n")
    record = passing_record(log, variant={"env": {}})
    proof.apply_feature_check(gates.load_specs()["flashcomm1"], record, log)
    assert record["verdict"] == "ACCEPTED" and record["feature_evidence"]["level"] == "accepted"
    assert record["category"] == "accepted-no-evidence"
    assert record["reason"].startswith("flashcomm1 accepted, no runtime evidence")
    env_era = tmp_path / "env.log"
    env_era.write_text("INFO:     Application startup complete.\n")
    switch = {"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}
    record = passing_record(env_era, variant={"env": switch}, command={"env": {"HCCL_OP_EXPANSION_MODE": "AIV", **switch}})
    proof.apply_feature_check(gates.load_specs()["flashcomm1"], record, env_era)
    assert record["verdict"] == "ACCEPTED" and record["feature_evidence"]["env"] == switch
    silent = passing_record(env_era, variant={"env": switch}, command={"env": {}})
    proof.apply_feature_check(gates.load_specs()["flashcomm1"], silent, env_era)
    assert silent["verdict"] == "FAIL", "without the switch in the server's environment nothing proves it"


def test_dynamo_fallback_is_contradicted_by_a_dynamo_compile_line(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("a\n(Worker pid=4534) INFO 11-21 21:14:43 [decorators.py:743] [backbone] saved AOT compiled "
                   "function to /root/.cache/vllm/torch_compile_cache/x/rank_0_0/model\n")
    record = passing_record(log, command={"env": {"TORCHDYNAMO_DISABLE": "1"}})
    proof.apply_feature_check(gates.load_specs()["dynamo-fallback"], record, log)
    assert record["verdict"] == "FAIL" and "did not take effect: serve.log line 2" in record["reason"]
    clean = tmp_path / "clean.log"
    clean.write_text("Application startup complete.\n")
    record = passing_record(clean, command={"env": {"TORCHDYNAMO_DISABLE": "1"}})
    proof.apply_feature_check(gates.load_specs()["dynamo-fallback"], record, clean)
    assert record["verdict"] == "PASS" and record["feature_evidence"]["env"] == {"TORCHDYNAMO_DISABLE": "1"}


def test_flashcomm1_gate_failure_line_is_named(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("(APIServer pid=2) ERROR 08-14 10:11:12 [platform.py:1] ValueError: Flash Comm v1 (Sequence "
                   "Parallelism) is only supported when tp_size > 1\n")
    record = {"verdict": "FAIL", "reason": "server never became ready: exited", "command": {"env": {}}}
    proof.apply_feature_check(gates.load_specs()["flashcomm1"], record, log)
    assert record["gate_failure"]["line_no"] == 1
    assert "flashcomm1 gate failure (serve.log line 1)" in record["reason"] and "tp_size > 1" in record["reason"]


def test_mtp_method_follows_the_installed_vllm_ascend(tmp_path):
    """v0.11.x vllm-ascend dispatches only deepseek_mtp (fact mtp-method-v011-ascend); later
    releases take the canonical `mtp` (fact mtp-method-canonical)."""
    facts = {**ASCEND_MOE_FACTS, "mtp_status": "enabled", "mtp_config_layers": 1, "mtp_weight_layers": 1}
    old = gates.decide("mtp", ascend_context(tmp_path, "0.11.0rc3", set(), facts))
    assert old.variant.flags == ["--speculative-config", '{"method":"deepseek_mtp","num_speculative_tokens":1}']
    assert "mtp-method-v011-ascend" in old.reason
    new = gates.decide("mtp", ascend_context(tmp_path, "0.13.0", set(), facts))
    assert new.variant.flags == ["--speculative-config", '{"method":"mtp","num_speculative_tokens":1}']
