"""Graph-mode rules of the ascend profile on their own: which mode a command runs in, what proves
it, the XliteGraph coverage per version, context parallel and soft partitions. Pure: the log is
given as the scanner's evidence (key -> line, key -> line number), no server starts."""

from __future__ import annotations

import pytest

from helpers import features, graphmode, profiles

GRAPH = profiles.load("ascend").graph
BASE = ["vllm", "serve", "/models/m", "--port", "8000"]
XLITE = ["--additional-config", '{"xlite_graph_config":{"enabled":true,"full_mode":true}}']
TORCHAIR = ["--additional-config={\"torchair_graph_config\": {\"enabled\": true}}"]


@pytest.mark.parametrize("argv, env, version, mode", [
    ([], {}, "0.13.0", "default"),
    (["--enforce-eager"], {}, "0.13.0", "eager"),
    (["--compilation-config", '{"cudagraph_mode":"NONE"}'], {}, "0.23.0", "cudagraph-none"),
    (XLITE, {}, "0.20.2rc1", "xlite"),
    (TORCHAIR, {}, "0.11.0rc3", "torchair"),
    (TORCHAIR, {}, "0.13.0", "default"),          # dropped in v0.12.0rc1: ACLGraph is the mode there
    ([], {"VLLM_USE_V2_MODEL_RUNNER": "1"}, "0.15.0rc1", "mrv2-no-replay-line"),
    ([], {"VLLM_USE_V2_MODEL_RUNNER": "1"}, "0.18.0", "default"),  # v0.17+ logs run_fullgraph
])
def test_the_command_and_the_installed_version_choose_the_mode(argv, env, version, mode):
    assert graphmode.select(GRAPH, BASE + argv, env, {"vllm-ascend": version}).id == mode


def test_aclgraph_needs_its_replay_line_after_the_first_request():
    mode = graphmode.select(GRAPH, BASE, {}, {"vllm-ascend": "0.13.0"})
    capture = "Graph capturing finished in 22 secs, took 0.26 GiB"
    evidence = {"graph_capture": capture, "graph_replay": "INFO [acl_graph.py:194] Replaying aclgraph"}
    before = graphmode.judge(mode, evidence, {"graph_capture": 40, "graph_replay": 50}, after_line=60)
    assert before["status"] == "FAIL" and before["category"] == "graph-not-replayed"
    assert "startup capture (line 40) alone" in before["reason"] and before["hint_zh"]
    after = graphmode.judge(mode, evidence, {"graph_capture": 40, "graph_replay": 70}, after_line=60)
    assert (after["status"], after["line_no"], after["key"]) == ("PASS", 70, "graph_replay")
    mrv2 = graphmode.judge(mode, {"graph_replay_mrv2": "run_fullgraph with num_tokens=8"},
                           {"graph_replay_mrv2": 61}, after_line=60)
    assert mrv2["status"] == "PASS" and mrv2["key"] == "graph_replay_mrv2"


def test_modes_without_a_per_request_line_are_proven_at_startup():
    xlite = graphmode.select(GRAPH, BASE + XLITE, {}, {"vllm-ascend": "0.20.2rc1"})
    found = graphmode.judge(xlite, {"xlite_runtime_pool": "xlite runtime pool size: 2048 MB"},
                            {"xlite_runtime_pool": 30}, after_line=60)
    assert (found["status"], found["name"], found["fact"]) == ("PASS", "XliteGraph", "replay-line-xlite")
    missing = graphmode.judge(xlite, {"xlite": "openEuler Xlite enabled."}, {"xlite": 10}, after_line=60)
    assert missing["status"] == "FAIL" and missing["category"] == "graph-mode-not-active"
    eager = graphmode.judge(graphmode.select(GRAPH, BASE + ["--enforce-eager"], {}, {}), {}, {}, 0)
    assert eager["status"] == "NOT_APPLICABLE"


def test_context_parallel_size_and_piecewise_capture():
    assert graphmode.context_parallel_size(BASE + ["--prefill-context-parallel-size", "2",
                                                   "--decode-context-parallel-size=2"]) == 4
    assert graphmode.context_parallel_size({"prefill_context_parallel_size": 2}) == 2
    assert graphmode.context_parallel_size(BASE) == 1
    assert graphmode.captures_piecewise(BASE)
    assert not graphmode.captures_piecewise(BASE + ["--compilation-config", '{"cudagraph_mode":"FULL_DECODE_ONLY"}'])


def test_a_soft_partition_is_seen_in_the_container_view():
    spec = GRAPH["soft_partition"]
    seen = graphmode.soft_partition(spec, {"ld_so_preload": "/opt/enpu/vcann-rt/lib/libvruntime.so\n", "files": []})
    assert "libvruntime.so" in seen
    assert graphmode.soft_partition(spec, {"ld_so_preload": "", "files": []}) == ""
    warning = graphmode.soft_partition_warning(seen, cp_size=2)
    assert "--enforce-eager" in warning and "FULL_DECODE_ONLY" not in warning


@pytest.mark.parametrize("version, architecture, category", [
    ("0.13.0", "Qwen3MoeForCausalLM", "framework-unsupported"),
    ("0.14.0rc1", "Qwen3MoeForCausalLM", "supported"),
    ("0.23.0", "DeepseekV3ForCausalLM", "framework-unsupported"),
    ("0.12.0rc1", "Qwen3ForCausalLM", "supported"),
    ("0.11.0", "Qwen3ForCausalLM", "framework-unsupported"),   # no Xlite before v0.12.0rc1
])
def test_xlite_coverage_follows_the_sourced_architecture_lists(version, architecture, category):
    rules = features.load_rules()
    facts = {"backend": "ascend", "graph_expected": True, "architecture": architecture}
    found = features.assess(rules.get("xlite"), rules, facts, versions={"vllm-ascend": version},
                            module_probe=lambda name: True)
    assert found.category == category, found.evidence
    if category == "supported":
        assert found.flags == XLITE
    not_installed = features.assess(rules.get("xlite"), rules, facts, versions={"vllm-ascend": version},
                                    module_probe=lambda name: name != "xlite")
    assert not_installed.category == "framework-unsupported" and "xlite" in not_installed.evidence


def test_a_context_parallel_log_never_gets_full_graphs_recommended(tmp_path):
    from helpers import diagnosis

    args = "{'model': '/models/m', 'prefill_context_parallel_size': 2, 'port': 8000}"
    log = tmp_path / "serve.log"
    log.write_text(f"(APIServer pid=1) INFO 01-04 15:24:33 [utils.py:253] non-default args: {args}\n"
                   "(Worker_TP0 pid=2) ERROR 06-10 16:39:42 [multiproc_executor.py:962] RuntimeError: NPUModelRunner "
                   "failed, error is capture_begin:../torch_npu/csrc/core/npu/NPUGraph.cpp:230 NPU function error: "
                   "c10_npu::acl::AclmdlRICaptureBegin(capture_stream_, capture_mode), error code is 207005\n")
    found = diagnosis.diagnose(log, model="m")
    assert found.category == "stream-exhaustion"
    assert '\\"cudagraph_mode\\":\\"PIECEWISE\\"' in found.next_command and "FULL" not in found.next_command
    assert "--prefill-context-parallel-size" not in found.next_command  # a bare log: only the rung's own args
    log.write_text(f"(APIServer pid=1) INFO 01-04 15:24:33 [utils.py:253] non-default args: {args}\n"
                   "[ERROR] RUNTIME(569,):2026-06-30-12:05:19.521.684 [api_c.cc:1081]569 rtMemcpy:ErrCode=107030, "
                   "desc=[the current capture mode does not support this operation], InnerCode=0x703001c\n")
    replay = diagnosis.diagnose(log, model="m")
    assert replay.category == "graph-capture-mode" and "context-parallel run" in replay.hint_en


@pytest.mark.parametrize("extra, warned", [
    (["--prefill-context-parallel-size", "2", "--compilation-config", '{"cudagraph_mode":"FULL_DECODE_ONLY"}'], True),
    (["--decode-context-parallel-size", "2", "--compilation-config", '{"cudagraph_mode":"FULL"}'], True),
    (["--prefill-context-parallel-size", "2", "--compilation-config", '{"cudagraph_mode":"PIECEWISE"}'], False),
    (["--prefill-context-parallel-size", "2"], False),                       # vLLM's default: not the command's
    (["--compilation-config", '{"cudagraph_mode":"FULL_DECODE_ONLY"}'], False),  # no context parallel
])
def test_a_command_that_sets_full_graphs_under_context_parallel_is_warned_before_the_start(extra, warned):
    warning = graphmode.full_under_context_parallel(BASE + extra)
    assert bool(warning) is warned
    if warned:
        assert "fact cp-no-full-cudagraph" in warning and "PIECEWISE" in warning


def test_the_stage_says_it_before_starting(tmp_path, tiny_dense, monkeypatch):
    """A replay-backend StageRun, constructed and asked for its start warnings; nothing starts."""
    from helpers import settings
    from helpers.model import resolve
    from helpers.stage import StageRequest, StageRun

    monkeypatch.setenv("REPLAY_SCENARIO", "v0.13-qwen3-30b-a3b")
    extra = "--prefill-context-parallel-size 2 --compilation-config '{\"cudagraph_mode\":\"FULL_DECODE_ONLY\"}'"
    loaded = settings.load({"MODEL": str(tiny_dense), "BACKEND": "replay", "RUNS_DIR": str(tmp_path / "runs"),
                            "EXTRA_ARGS": extra})
    run = StageRun(loaded, resolve(loaded), StageRequest(step="stage-b", stage="b"), out=lambda _l: None)
    run._start_warnings()
    assert any(w.startswith("cudagraph_mode FULL_DECODE_ONLY with context parallel size 2") for w in run.warnings)
