"""helpers/verdict: the `next:` command builder and the failure-phase classifier, as functions.
No server; the phase tests feed the frame parser a few traceback frame lines written here (the
real-log behaviour is covered through make in tests/integration/test_replay_verdicts.py)."""

from __future__ import annotations

from helpers.catalog import load_catalog
from helpers.verdict import nextstep, phase

AIV_RUNG = "aiv-fewer-capture-sizes"


def test_extra_args_keep_each_flag_once_and_merge_json_options():
    merged = nextstep.merge_args(
        ["--prefill-context-parallel-size", "2", "--compilation-config", '{"cudagraph_mode":"FULL_DECODE_ONLY"}'],
        ["--compilation-config", '{"cudagraph_capture_sizes":[1,2,4,8]}'])
    assert merged.count("--compilation-config") == 1
    assert merged[-1] == '{"cudagraph_mode":"FULL_DECODE_ONLY","cudagraph_capture_sizes":[1,2,4,8]}'
    assert merged[:2] == ["--prefill-context-parallel-size", "2"]


def test_a_remedy_the_run_already_had_moves_to_the_next_one():
    rungs = load_catalog().rungs
    plain = (["vllm", "serve", "m"], {"HCCL_OP_EXPANSION_MODE": "AIV"})
    assert nextstep.advance(rungs, AIV_RUNG, *plain) == AIV_RUNG  # the profile's AIV alone is not the remedy
    tried = (["vllm", "serve", "m", "--compilation-config", '{"cudagraph_mode":"FULL_DECODE_ONLY"}'],
             {"HCCL_OP_EXPANSION_MODE": "AIV"})
    assert nextstep.advance(rungs, AIV_RUNG, *tried) == "fewer-capture-sizes"
    fewer = (["vllm", "serve", "m", "--compilation-config",
              '{"cudagraph_mode":"FULL_DECODE_ONLY","cudagraph_capture_sizes":[1,2,4,8]}'], {"HCCL_OP_EXPANSION_MODE": "AIV"})
    assert nextstep.advance(rungs, AIV_RUNG, *fewer) == "eager"
    assert nextstep.advance(rungs, "eager", ["vllm", "--enforce-eager"], {}) == "code-fix"


def test_the_next_command_drops_what_the_run_set_keeps_the_stage_and_carries_given_variables():
    command = nextstep.finish("HCCL_OP_EXPANSION_MODE=AIV make eager MODEL=Qwen3-8B",
                              run_env={"HCCL_OP_EXPANSION_MODE": "AIV"},
                              given={"MODEL": "Qwen3-8B", "BACKEND": "replay", "RUNS_DIR": "/tmp/my runs", "LOG": "x"},
                              stage="a")
    assert command == 'make eager MODEL=Qwen3-8B STAGE=a BACKEND=replay RUNS_DIR="/tmp/my runs"'
    assert nextstep.finish("make stage-b MODEL=m", stage="a") == "make stage-a MODEL=m"
    # a variable the rung sets is not overridden by the carried one
    assert nextstep.finish("MAX_MODEL_LEN=4096 make stage-b MODEL=m", given={"MAX_MODEL_LEN": "131072"}) == \
        "MAX_MODEL_LEN=4096 make stage-b MODEL=m"


def write_frames(path, functions: list[str], error: str) -> int:
    lines = ["(Worker pid=1) ERROR [multiproc_executor.py:1] Traceback (most recent call last):"]
    lines += [f'(Worker pid=1) ERROR [multiproc_executor.py:1]   File "/x/{f}.py", line 1, in {f}' for f in functions]
    lines.append(f"(Worker pid=1) ERROR [multiproc_executor.py:1] {error}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def test_the_innermost_phase_frame_decides_and_memory_gets_that_phases_fix(tmp_path):
    log = tmp_path / "serve.log"
    oom = "RuntimeError: NPU out of memory. Tried to allocate 2.00 GiB"
    line = write_frames(log, ["run_engine_core", "_initialize_kv_caches", "determine_available_memory", "profile_run",
                              "_dummy_run", "forward"], oom)
    placed = phase.classify(log, line_no=line, label="compiling", ready_line=None)
    assert placed.phase == "kv-cache" and "profile_run" in placed.how
    advice = phase.advise(placed, "oom", oom)
    assert advice.rung == "lower-gpu-memory-utilization" and "GPU_MEMORY_UTILIZATION" in advice.hint_en
    line = write_frames(log, ["run_engine_core", "_initialize_kv_caches", "compile_or_warm_up_model", "capture_model"],
                        oom)
    assert phase.classify(log, line_no=line, label="", ready_line=None).phase == "graph-capture"
    line = write_frames(log, ["init_device", "load_model", "get_model", "load_weights"], oom)
    assert phase.advise(phase.classify(log, line_no=line, label="", ready_line=None), "oom", oom).rung == "more-tp"
    # after ready: the first request; a runtime OOM there gets fewer sequences
    placed = phase.classify(log, line_no=50, label="ready", ready_line=10)
    assert placed.phase == "first-request" and phase.advise(placed, "false-ready", "EL0004: ...").rung == "fewer-sequences"
    # the weights were in and nothing else was logged: the profile run that sizes the KV cache
    assert phase.classify(None, line_no=40, label="loading weights", ready_line=None, weights_loaded_line=30).phase == "kv-cache"


def test_no_room_for_any_cache_block_asks_for_a_larger_budget_not_a_shorter_length():
    placed = phase.Placed("kv-cache", "KV-cache allocation", "log phase")
    text = "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`"
    advice = phase.advise(placed, "kv-too-small", text)
    assert advice.rung == "raise-gpu-memory-utilization" and "MAX_MODEL_LEN" not in advice.hint_en
    # the estimate case keeps its own fix: the length vLLM says fits
    assert phase.advise(placed, "kv-too-small", "the estimated maximum model length is 3968") is None
