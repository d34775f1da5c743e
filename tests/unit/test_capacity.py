"""Capacity: metric definitions (checked against hand-computed values and vLLM's own benchmark
code on a recorded real run), /metrics parsing on a recorded real scrape, log facts from real
vLLM lines, the `vllm bench serve` argv, the headline, and the sweep logic.

The sweep tests run the real CLI against tests/fixtures/fake_server.py (profile `fake`): it
reaches paths a real CPU server cannot produce on demand or cheaply here (a start refused for
KV cache without vLLM's estimate, a failure at a chosen max-num-seqs, many starts in a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port, run_cli
from helpers import capacity, capacity_cell, loadgen, profiles, settings
from helpers.plan import build_plan

FIXTURES = REPO / "tests" / "fixtures" / "capacity"


def recorded_run() -> tuple[list[loadgen.RequestTiming], dict]:
    data = json.loads((FIXTURES / "recorded_load.json").read_text())
    return [loadgen.RequestTiming(**r) for r in data["requests"]], data


# ----------------------------------------------------------------------------- metrics
def test_metrics_by_hand_on_a_small_run():
    """Three requests, numbers chosen so every definition can be checked on paper."""
    runs = [
        loadgen.RequestTiming(success=True, start_time=0.0, ttft=0.10, itl=[0.02, 0.03, 0.05], latency=0.20,
                              output_tokens=4, prompt_len=100),
        loadgen.RequestTiming(success=True, start_time=0.0, ttft=0.30, itl=[0.10], latency=0.40,
                              output_tokens=2, prompt_len=50),
        loadgen.RequestTiming(success=False, error="HTTP 500"),
    ]
    m = loadgen.compute_metrics(runs, duration=0.5)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (150, 6)
    assert m["request_throughput"] == pytest.approx(4.0)          # 2 / 0.5
    assert m["output_throughput"] == pytest.approx(12.0)          # 6 / 0.5
    assert m["total_token_throughput"] == pytest.approx(312.0)    # 156 / 0.5
    assert m["mean_ttft_ms"] == pytest.approx(200.0)              # (100 + 300) / 2
    # TPOT excludes the first token: (0.20 - 0.10) / 3 and (0.40 - 0.30) / 1
    assert m["mean_tpot_ms"] == pytest.approx((100 / 3 + 100) / 2)
    assert m["mean_itl_ms"] == pytest.approx(50.0)                # (20 + 30 + 50 + 100) / 4
    assert m["median_itl_ms"] == pytest.approx(40.0)              # between 30 and 50
    assert m["p99_itl_ms"] == pytest.approx(50 + 0.97 * 50)       # rank 2.97 of [20, 30, 50, 100]
    assert m["mean_e2el_ms"] == pytest.approx(300.0)
    assert m["p99_e2el_ms"] == pytest.approx(200 + 0.99 * 200)


def test_a_single_token_request_has_no_tpot():
    runs = [loadgen.RequestTiming(success=True, ttft=0.1, latency=0.1, output_tokens=1, prompt_len=3)]
    m = loadgen.compute_metrics(runs, duration=1.0)
    assert m["mean_tpot_ms"] == 0.0 and m["mean_ttft_ms"] == pytest.approx(100.0)


def test_percentile_matches_numpy():
    numpy = pytest.importorskip("numpy")
    for values in ([1.0], [3.0, 1.0], [0.5, 0.1, 0.9, 0.3, 0.7, 0.2], list(range(17))):
        for p in (0, 1, 50, 90, 99, 100):
            assert loadgen.percentile(values, p) == pytest.approx(float(numpy.percentile(values, p)))


def test_recorded_run_metrics_by_hand():
    """A real CPU-backend load (2 concurrent requests of 2032+16 tokens), recomputed here from
    the raw per-request timings without the module's helpers."""
    timings, data = recorded_run()
    m = loadgen.compute_metrics(timings, data["duration"])
    ok = [t for t in timings if t.success]
    assert m["completed"] == len(ok) == data["num_prompts"]
    assert all(t.output_tokens == data["output_len"] for t in ok), "ignore_eos + min_tokens fix the length"
    assert all(t.prompt_len == data["input_len"] for t in ok), "token-id prompts have the exact length"
    assert m["mean_ttft_ms"] == pytest.approx(sum(t.ttft for t in ok) / len(ok) * 1000)
    tpots = [(t.latency - t.ttft) / (t.output_tokens - 1) for t in ok]
    assert m["mean_tpot_ms"] == pytest.approx(sum(tpots) / len(tpots) * 1000)
    itls = [gap for t in ok for gap in t.itl]
    # the server may bundle several tokens in one stream chunk: ITL counts chunks, TPOT tokens
    assert 0 < len(itls) <= sum(t.output_tokens - 1 for t in ok)
    assert m["mean_itl_ms"] == pytest.approx(sum(itls) / len(itls) * 1000)
    assert m["mean_e2el_ms"] == pytest.approx(sum(t.latency for t in ok) / len(ok) * 1000)
    for t in ok:  # E2EL is first token + the gaps after it
        assert t.latency == pytest.approx(t.ttft + sum(t.itl), abs=1e-6)
    assert m["output_throughput"] == pytest.approx(sum(t.output_tokens for t in ok) / data["duration"])


def test_recorded_run_metrics_equal_vllms_own_benchmark_code():
    serve = pytest.importorskip("vllm.benchmarks.serve")
    endpoint = pytest.importorskip("vllm.benchmarks.lib.endpoint_request_func")
    timings, data = recorded_run()
    outputs = []
    for t in timings:
        out = endpoint.RequestFuncOutput()
        out.success, out.ttft, out.itl, out.latency = t.success, t.ttft, list(t.itl), t.latency
        out.output_tokens, out.prompt_len, out.start_time = t.output_tokens, t.prompt_len, t.start_time
        outputs.append(out)
    metrics, _ = serve.calculate_metrics(input_requests=[], outputs=outputs, dur_s=data["duration"],
                                         tokenizer=None, selected_percentiles=[50.0, 99.0], goodput_config_dict={})
    ours = loadgen.compute_metrics(timings, data["duration"])
    for name in ("completed", "failed", "request_throughput", "output_throughput", "total_token_throughput"):
        assert ours[name] == pytest.approx(getattr(metrics, name if name != "failed" else "failed"))
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert ours[f"mean_{name}_ms"] == pytest.approx(getattr(metrics, f"mean_{name}_ms"))
        assert ours[f"median_{name}_ms"] == pytest.approx(getattr(metrics, f"median_{name}_ms"))
        assert ours[f"std_{name}_ms"] == pytest.approx(getattr(metrics, f"std_{name}_ms"))
        p99 = dict(getattr(metrics, f"percentiles_{name}_ms"))[99.0]
        assert ours[f"p99_{name}_ms"] == pytest.approx(p99)


def test_our_metrics_equal_a_real_vllm_bench_serve_result():
    """bench-serve.json was written by vLLM's benchmark code from our argv: reading its detailed
    per-request data and recomputing gives the numbers vLLM printed and saved."""
    result = json.loads((FIXTURES / "bench-serve.json").read_text())
    ours = loadgen.compute_metrics(loadgen.timings_from_bench_result(result), result["duration"])
    names = ["completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
             "output_throughput", "total_token_throughput"]
    names += [f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "std", "p50", "p99")]
    for name in names:
        assert ours[name] == pytest.approx(result[name]), name


def test_bench_result_timings_round_trip():
    timings, data = recorded_run()
    detailed = {"ttfts": [t.ttft for t in timings], "itls": [t.itl for t in timings],
                "latencies": [t.latency for t in timings], "start_times": [t.start_time for t in timings],
                "output_lens": [t.output_tokens for t in timings], "input_lens": [t.prompt_len for t in timings],
                "errors": ["" for _ in timings]}
    again = loadgen.timings_from_bench_result(detailed)
    assert loadgen.compute_metrics(again, data["duration"]) == loadgen.compute_metrics(timings, data["duration"])


# ----------------------------------------------------------------------------- /metrics
def test_prometheus_scrape_of_a_real_server():
    text = (FIXTURES / "metrics.txt").read_text()
    sample = loadgen.server_sample(loadgen.parse_prometheus(text))
    assert sample["running"] is not None and sample["waiting"] is not None
    assert sample["kv_cache_usage_perc"] is not None and 0.0 <= sample["kv_cache_usage_perc"] <= 1.0
    assert sample["preemptions"] is not None


def test_prometheus_sums_label_sets_and_reads_the_old_kv_name():
    text = ('# HELP x\nvllm:num_requests_running{engine="0"} 3.0\nvllm:num_requests_running{engine="1"} 2.0\n'
            'vllm:gpu_cache_usage_perc{engine="0"} 0.5\nvllm:num_preemptions_total{engine="0"} 7\n')
    sample = loadgen.server_sample(loadgen.parse_prometheus(text))
    assert sample["running"] == 5.0 and sample["kv_cache_usage_perc"] == 0.5 and sample["preemptions"] == 7.0
    summary = loadgen.summarize_samples([sample, dict(sample, running=9.0, preemptions=8.0), {"t": 1.0}])
    assert summary["max_running"] == 9.0 and summary["preemptions"] == 8.0 and summary["samples"] == 3


# ----------------------------------------------------------------------------- log facts
def test_log_facts_from_real_vllm_lines():
    """The real refusal log of the tiny model (KV budget 4 MiB) read by the real scanner."""
    from helpers.logscan import scan_file

    scanner = scan_file(FIXTURES / "kv-too-small.log")
    facts = capacity_cell.log_facts(scanner.evidence, [h.to_dict() for h in scanner.hits])
    assert facts["kv_too_small"] and facts["estimated_max_model_len"] == 3968
    assert "the estimated maximum model length is 3968" in facts["kv_line"]["text"]
    from helpers.logscan import LogScanner

    ok = LogScanner()
    ok.feed("(EngineCore pid=4502) INFO 11-21 21:14:43 [kv_cache_utils.py:2327] CPU KV cache size: "
            "1,048,576 tokens, Maximum concurrency for 2,048 tokens per request: 512.00x\n")
    facts = capacity_cell.log_facts(ok.evidence, [h.to_dict() for h in ok.hits])
    assert (facts["kv_cache_tokens"], facts["max_concurrency"], facts["kv_too_small"]) == (1048576, 512.0, False)


# ----------------------------------------------------------------------------- inputs
def test_sweep_parsing():
    ascend = profiles.load("ascend")
    assert capacity.sweep_cells(settings.load({"SWEEP": ""}).sweep, ascend) == [16]
    assert capacity.sweep_cells(settings.load({"SWEEP": "16 32,64"}).sweep, ascend) == [16, 32, 64]
    assert capacity.sweep_cells(settings.load({"SWEEP": "max"}).sweep, ascend) == [16, 32, 64]
    with pytest.raises(capacity.UsageError, match="not a list of max-num-seqs"):
        settings.load({"SWEEP": "16 lots"})


def test_bench_serve_argv_golden():
    argv = loadgen.bench_serve_argv(url="http://127.0.0.1:8000", model_path="/models/Qwen3-8B",
                                    served_name="Qwen3-8B", input_len=130944, output_len=128, num_prompts=16,
                                    concurrency=16, result_dir="/runs/x", result_filename="bench-serve.json",
                                    trust_remote_code=True)
    assert " ".join(argv) == (
        "vllm bench serve --backend vllm --base-url http://127.0.0.1:8000 --endpoint /v1/completions "
        "--model /models/Qwen3-8B --served-model-name Qwen3-8B --tokenizer /models/Qwen3-8B "
        "--dataset-name random --random-input-len 130944 --random-output-len 128 --random-range-ratio 0 "
        "--ignore-eos --num-prompts 16 --max-concurrency 16 --percentile-metrics ttft,tpot,itl,e2el "
        "--metric-percentiles 50,99 --save-result --save-detailed --result-dir /runs/x "
        "--result-filename bench-serve.json --ready-check-timeout-sec 60 --trust-remote-code")


def test_bench_serve_argv_is_accepted_by_vllms_parser():
    """vLLM's own argument parser accepts every flag we pass (catches renamed flags)."""
    serve = pytest.importorskip("vllm.benchmarks.serve")
    import argparse

    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    argv = loadgen.bench_serve_argv(url="http://h:1", model_path="/m", served_name="m", input_len=10,
                                    output_len=2, num_prompts=2, concurrency=2, result_dir="/r",
                                    result_filename="f.json", trust_remote_code=True)
    args = parser.parse_args(argv[3:])
    assert args.max_concurrency == 2 and args.ignore_eos and args.save_detailed


def test_explicit_kv_cache_bytes_removes_the_legacy_cpu_variable():
    """On CPU VLLM_CPU_KVCACHE_SPACE overrides --kv-cache-memory-bytes (and an empty value crashes
    the worker), so the flag unsets it: recorded in command.sh and the shell line."""
    profile = profiles.load("cpu")
    plan = build_plan(profile, model_path="/m", served_name="m", stage="b", host="127.0.0.1", port=1,
                      extra_args="--kv-cache-memory-bytes 4194304", python="/py")
    assert "VLLM_CPU_KVCACHE_SPACE" not in plan.env
    assert "VLLM_CPU_KVCACHE_SPACE" not in plan.process_env({"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert plan.shell_line().startswith("env -u VLLM_CPU_KVCACHE_SPACE HF_HUB_OFFLINE=1 ")
    assert "unset VLLM_CPU_KVCACHE_SPACE" in plan.command_sh("x")
    plain = build_plan(profile, model_path="/m", served_name="m", stage="b", host="127.0.0.1", port=1, python="/py")
    assert plain.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and plain.unset_env == []


# ----------------------------------------------------------------------------- headline
def cell(n, length, verdict="PASS", role="sweep", **extra):
    return dict(key=capacity_cell.cell_key(n, length), max_num_seqs=n, max_model_len=length, verdict=verdict,
                role=role, **extra)


def test_headline_for_a_passing_sweep():
    cells = [cell(16, 131072, max_concurrency=20.0), cell(32, 131072, max_concurrency=20.0),
             cell(64, 131072, "FAIL", category="oom"), cell(128, 131072, "NOT_RUN"), cell(256, 131072, "INTERRUPTED")]
    text = capacity.headline(cells, 131072, 131072, "baseline-start")
    assert text == ("serves 16 concurrent requests at 131072 tokens; "
                    "32 at 131072 (KV cache holds 20.0 full-length requests; the rest queued); "
                    "fails with 64 at 131072 (oom); 128 at 131072 not run; 256 at 131072 interrupted; "
                    "practical max length 131072 of theoretical 131072 (the tested length started and served)")
    zh = capacity.headline_zh(cells, 131072, 131072, "baseline-start")
    assert "16 并发 @ 131072 tokens 通过" in zh and "64 并发 @ 131072 失败（oom）" in zh


def test_headline_when_the_kv_cache_is_too_small():
    cells = [cell(16, 131072, "FAIL", category="kv-too-small"),
             cell(16, 43680, role="practical-search", max_concurrency=16.2), cell(32, 43680)]
    text = capacity.headline(cells, 131072, 43680, "vllm-estimate-confirmed")
    assert text.startswith("fails with 16 at 131072 (kv-too-small); serves 16 concurrent requests at 43680 "
                           "tokens; 32 at 43680;")
    assert text.endswith("practical max length 43680 of theoretical 131072 (vLLM's estimate, confirmed by a start)")


# ----------------------------------------------------------------------------- the sweep (fake server)
@pytest.fixture
def fake_env(tmp_path, runs_dir):
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"],
                                                   "max_position_embeddings": 4096}))
    return base_env(runs_dir, BRINGUP_PROFILE_DIR=str(REPO / "tests" / "fixtures" / "profiles"),
                    BACKEND="fake", MODEL=str(model), PORT=str(free_port()), READY_TIMEOUT="60")


def capacity_doc(runs_dir: Path) -> dict:
    return json.loads((runs_dir / "fake-model" / "capacity.json").read_text())


def test_sweep_passes_and_resumes_without_redoing_cells(fake_env, runs_dir):
    fake_env.update(SWEEP="2 4", MAX_MODEL_LEN="1024")
    first = run_cli(["capacity"], fake_env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    doc = capacity_doc(runs_dir)
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [("s2-l1024", "PASS"), ("s4-l1024", "PASS")]
    four = doc["cells"][1]
    assert (four["completed"], four["failed"], four["kv_cache_tokens"]) == (4, 0, 1 << 20)
    assert four["metrics"]["total_output_tokens"] == 4 * 8 and four["metrics"]["mean_tpot_ms"] > 0
    assert four["server_metrics"]["max_kv_cache_usage_perc"] == 0.25
    assert (Path(four["run_dir"]) / "cell.json").is_file() and (Path(four["run_dir"]) / "evidence.json").is_file()
    assert doc["practical_max_len"] == 1024 and doc["theoretical_max_len"] == 4096
    assert doc["headline"].startswith("serves 2 concurrent requests at 1024 tokens; 4 at 1024;")
    md = (runs_dir / "fake-model" / "capacity.md").read_text()
    assert doc["headline"] in md and "| 4 | 1024 | sweep | PASS |" in md
    starts = len(list(runs_dir.glob("fake-model/2*-capacity-*/serve.log")))

    again = run_cli(["capacity"], fake_env, timeout=120)
    assert again.returncode == 0
    assert "finished earlier (PASS), skipped" in again.stdout
    assert len(list(runs_dir.glob("fake-model/2*-capacity-*/serve.log"))) == starts, "no cell may run again"
    assert capacity_doc(runs_dir)["cells"][1]["run_dir"] == four["run_dir"]

    forced = run_cli(["capacity"], dict(fake_env, FORCE="1", SWEEP="2"), timeout=120)
    assert forced.returncode == 0
    assert len(list(runs_dir.glob("fake-model/2*-capacity-*/serve.log"))) == starts + 1


def test_a_failing_cell_stops_the_sweep_and_keeps_earlier_cells(fake_env, runs_dir):
    fake_env.update(SWEEP="2 4 8", MAX_MODEL_LEN="1024", FAKE_FAIL_SEQS="4")
    result = run_cli(["capacity"], fake_env, timeout=120)
    assert result.returncode == 0, "the baseline (first) cell passed"
    doc = capacity_doc(runs_dir)
    assert [(c["key"], c["verdict"]) for c in doc["cells"]] == [
        ("s2-l1024", "PASS"), ("s4-l1024", "FAIL"), ("s8-l1024", "NOT_RUN")]
    assert "fake failure at max-num-seqs 4" in (doc["cells"][1]["root_cause"] or "")
    assert len(list(runs_dir.glob("fake-model/2*-capacity-*"))) == 2, "the cell after a failure never starts"


def test_practical_length_from_vllms_estimate(fake_env, runs_dir):
    fake_env.update(SWEEP="2 4", MAX_MODEL_LEN="4096", FAKE_KV_TOKENS="3000", FAKE_ESTIMATE="2960")
    result = run_cli(["capacity"], fake_env, timeout=120)
    assert result.returncode == 1, "the baseline length does not start"
    doc = capacity_doc(runs_dir)
    assert [(c["key"], c["role"], c["verdict"]) for c in doc["cells"]] == [
        ("s2-l4096", "sweep", "FAIL"), ("s2-l2960", "practical-search", "PASS"), ("s4-l2960", "sweep", "PASS")]
    assert doc["cells"][0]["category"] == "kv-too-small" and doc["cells"][0]["estimated_max_model_len"] == 2960
    assert "KV cache is needed" in doc["cells"][0]["root_cause"]
    assert (doc["practical_max_len"], doc["practical_source"]) == (2960, "vllm-estimate-confirmed")
    assert "vLLM estimates the maximum model length at 2960" in result.stdout


def test_practical_length_by_bisection_without_an_estimate(fake_env, runs_dir):
    fake_env.update(SWEEP="2", MAX_MODEL_LEN="4096", FAKE_KV_TOKENS="3000", FAKE_NO_ESTIMATE="1")
    result = run_cli(["capacity"], fake_env, timeout=180)
    assert result.returncode == 1
    doc = capacity_doc(runs_dir)
    tried = [c["max_model_len"] for c in doc["cells"] if c["role"] == "practical-search"]
    assert tried[:2] == [2048, 3072], "halves between 0 and the refused length, then between the last good and bad"
    assert doc["practical_source"] == "bisection"
    assert 3000 - 4096 // 64 <= doc["practical_max_len"] <= 3000
    assert len(tried) <= 6


def test_an_interrupted_cell_is_not_finished(fake_env, runs_dir):
    fake_env.update(SWEEP="2", MAX_MODEL_LEN="1024")
    assert run_cli(["capacity"], fake_env, timeout=120).returncode == 0
    cell_json = next(runs_dir.glob("fake-model/2*-capacity-s2-l1024/cell.json"))
    record = json.loads(cell_json.read_text())
    cell_json.write_text(json.dumps(dict(record, verdict="INTERRUPTED")))
    again = run_cli(["capacity"], fake_env, timeout=120)
    assert "skipped" not in again.stdout
    assert len(list(runs_dir.glob("fake-model/2*-capacity-s2-l1024"))) == 2


@pytest.mark.parametrize("overrides, expect", [
    ({"SWEEP": "16 x"}, "SWEEP='16 x' is not a list of max-num-seqs values"),
    ({"MAX_MODEL_LEN": "8"}, "MAX_MODEL_LEN=8 leaves no room"),
])
def test_bad_capacity_input_is_one_line_exit_2(fake_env, overrides, expect):
    result = run_cli(["capacity"], dict(fake_env, **overrides), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and expect in result.stderr
