"""The replay server on its own: started as a subprocess in its own process group on a free port,
always stopped (SIGKILL to its group) when the test ends, whatever happened.

Most tests run with REPLAY_SPEED=0 (no pacing) and only look at what the server prints and
answers; the timing tests run at the scenario's own pace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import REPO, free_port

PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Replay:
    proc: subprocess.Popen
    port: int
    log_path: Path
    served: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"server exited ({self.proc.returncode}) before {text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not printed within {timeout} s:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 10.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before ready:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise AssertionError(f"not ready within {timeout} s:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.log()[-3000:]}") from None

    def chat(self, content: object = "say hi", **extra) -> requests.Response:
        body = {"model": self.served, "messages": [{"role": "user", "content": content}], "max_tokens": 16, **extra}
        return requests.post(f"{self.url}/v1/chat/completions", json=body, timeout=10, stream=bool(extra.get("stream")))

    def utime(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, in seconds


@contextmanager
def replay(tmp_path: Path, scenario: str, *flags: str, speed: str = "0", tp: int = 1, max_len: int = 32768,
           env: dict[str, str] | None = None, port: int | None = None) -> Iterator[Replay]:
    port = port or free_port()
    served = "replay-model"
    argv = [PYTHON, "-m", "helpers.replay", "--model", "/models/replay", "--served-model-name", served,
            "--trust-remote-code", "--dtype", "bfloat16", "--max-model-len", str(max_len),
            "--tensor-parallel-size", str(tp), "--max-num-seqs", "16", "--load-format", "dummy",
            "--host", "127.0.0.1", "--port", str(port), *flags]
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "TORCHDYNAMO", "REPLAY_"))}
    process_env.update({"PYTHONPATH": str(REPO), "REPLAY_SCENARIO": scenario, "REPLAY_SPEED": speed})
    process_env.update(env or {})
    log_path = tmp_path / f"{scenario}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=process_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Replay(proc, port, log_path, served)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # our own group: pid == pgid (start_new_session)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


def png_data_url() -> str:
    from helpers.smoke import png_data_url as toolkit_png  # the toolkit's own smoke image

    return toolkit_png()


# ----------------------------------------------------------------------------- healthy server
def test_ready_after_the_recorded_startup_at_its_own_pace(tmp_path):
    with replay(tmp_path, "v0.11-qwen3-8b", speed="1") as server:
        with pytest.raises(requests.RequestException):
            requests.get(f"{server.url}/health", timeout=0.5)  # bound but not listening while starting
        seconds = server.wait_ready(timeout=8)
        assert 1.0 <= seconds <= 5.0, seconds
        server.wait_for("Application startup complete.")  # the log may trail the socket on a busy machine
        log = server.log()
        assert log.index("Loading model weights took") < log.index("Application startup complete.")


def test_models_chat_stream_completions_metrics_and_the_post_request_line(tmp_path):
    with replay(tmp_path, "v0.11-qwen3-8b") as server:
        server.wait_ready()
        models = requests.get(f"{server.url}/v1/models", timeout=2).json()
        assert [m["id"] for m in models["data"]] == ["replay-model"]
        assert "Replaying aclgraph" not in server.log(), "logged once per process, on the first replay only"
        assert "Capturing ACL graphs" in server.log()

        reply = server.chat()
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"].strip()
        server.wait_for("Replaying aclgraph")

        with server.chat(stream=True) as stream:
            lines = [line for line in stream.iter_lines(decode_unicode=True) if line]
        assert lines[-1] == "data: [DONE]"
        text = "".join((json.loads(line[5:])["choices"][0].get("delta") or {}).get("content") or ""
                       for line in lines[:-1])
        assert text.strip()

        body = {"model": "replay-model", "prompt": list(range(100)), "max_tokens": 24, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        with requests.post(f"{server.url}/v1/completions", json=body, stream=True, timeout=10) as response:
            events = [json.loads(line[5:]) for line in response.iter_lines(decode_unicode=True)
                      if line.startswith("data: {")]
        assert sum(1 for e in events if e["choices"]) == 24
        assert events[-1]["usage"] == {"prompt_tokens": 100, "total_tokens": 124, "completion_tokens": 24}

        metrics = requests.get(f"{server.url}/metrics", timeout=2).text
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:num_preemptions_total", "vllm:request_success_total"):
            assert name in metrics
        assert server.log().count("Replaying aclgraph") == 1
        assert '"POST /v1/chat/completions HTTP/1.1" 200 OK' in server.log()


def test_image_chat_needs_a_png_data_url_and_text_only_refuses_images(tmp_path):
    image = [{"type": "image_url", "image_url": {"url": png_data_url()}}, {"type": "text", "text": "what?"}]
    bad = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with replay(tmp_path, "v0.11-qwen3-8b") as server:
        server.wait_ready()
        assert server.chat(image).status_code == 200
        assert server.chat(bad).status_code == 400
    with replay(tmp_path, "v0.11-qwen3-8b", "--limit-mm-per-prompt", '{"image":0,"video":0,"audio":0}') as server:
        server.wait_ready()
        assert server.chat(image).status_code == 400
        assert server.chat().status_code == 200


def test_enforce_eager_removes_capture_and_replay_and_prints_the_eager_line(tmp_path):
    with replay(tmp_path, "v0.11-qwen3-8b", "--enforce-eager") as server:
        server.wait_ready()
        assert server.chat().status_code == 200
        server.wait_for('"POST /v1/chat/completions')
        log = server.log()
        assert "Compilation disabled, using eager mode by default" in log
        assert "Capturing ACL graphs" not in log and "Replaying aclgraph" not in log


def test_expert_parallel_lines_and_worker_prefixes(tmp_path):
    with replay(tmp_path, "v0.11-qwen3-30b-a3b", "--enable-expert-parallel", tp=2) as server:
        server.wait_ready()
        log = server.log()
        assert "[EP Rank 0/2] Expert parallelism is enabled. Local/global number of experts: 64/128" in log
        assert "(Worker_TP0_EP0 pid=" in log
    with replay(tmp_path, "v0.11-qwen3-30b-a3b", tp=2) as server:
        server.wait_ready()
        log = server.log()
        assert "Expert parallelism is enabled" not in log and "_EP0 pid=" not in log
        assert "(Worker_TP0 pid=" in log


# ----------------------------------------------------------------------------- feature reactions
def test_flashcomm1_in_the_env_var_era_asserts_its_preconditions(tmp_path):
    fc1 = {"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}
    with replay(tmp_path, "v0.13-qwen3-30b-a3b", env=fc1, tp=1) as server:
        assert server.wait_exit() == 1
        assert "AssertionError: Flash Comm v1 (Sequence Parallelism) is only supported when tp_size > 1." in server.log()
    with replay(tmp_path, "v0.13-qwen3-30b-a3b", env=fc1, tp=2) as server:
        assert server.wait_exit() == 1
        assert "requires enable_expert_parallel=True for MoE models" in server.log()
    with replay(tmp_path, "v0.13-qwen3-30b-a3b", "--enable-expert-parallel", env=fc1, tp=2) as server:
        server.wait_ready()
        assert "Sequence parallelism is enabled" not in server.log(), "Qwen3-30B-A3B has no shared experts"


def test_flashcomm1_in_the_additional_config_era_and_on_main(tmp_path):
    config = ("--additional-config", '{"enable_flashcomm1":true}')
    with replay(tmp_path, "v0.23-deepseek-v3", *config, "--enable-expert-parallel", tp=2) as server:
        server.wait_ready()
        log = server.log()
        assert "AscendConfig.enable_flashcomm1 is set from additional_config with value True." in log
        assert "[fused_moe/layer] Sequence parallelism is enabled, shared experts are replicated" in log
    with replay(tmp_path, "v0.23-deepseek-v3", *config, tp=1) as server:
        assert server.wait_exit() == 1
        assert "AssertionError: Flash Comm v1 is only supported when tp_size > 1." in server.log()
    with replay(tmp_path, "v0.23-deepseek-v3", env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "0"}) as server:
        server.wait_ready()
        assert "falls back to environment variable VLLM_ASCEND_ENABLE_FLASHCOMM1 with value False" in server.log()
    with replay(tmp_path, "main-qwen3-30b-a3b", env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "0"}, tp=2) as server:
        server.wait_ready()
        log = server.log()
        assert "FlashComm is deprecated; remove enable_flashcomm1 and VLLM_ASCEND_ENABLE_FLASHCOMM1" in log
        assert "Sequence parallelism is enabled" not in log


def test_mtp_drafter_metrics_deprecation_and_unsupported_method(tmp_path):
    spec = ("--speculative-config", '{"method":"mtp","num_speculative_tokens":1}')
    with replay(tmp_path, "v0.23-deepseek-v3", *spec, speed="5") as server:
        server.wait_ready()
        assert "Loading drafter model..." in server.log() and "deprecated" not in server.log()
        assert "SpecDecoding metrics" not in server.log(), "metrics are periodic and need traffic"
        assert server.chat().status_code == 200
        server.wait_for("SpecDecoding metrics:", timeout=5)
    with replay(tmp_path, "v0.23-deepseek-v3", "--speculative-config",
                '{"method":"deepseek_mtp","num_speculative_tokens":1}') as server:
        server.wait_ready()
        assert "method `deepseek_mtp` is deprecated and replaced with mtp." in server.log()
    with replay(tmp_path, "v0.23-deepseek-v3", "--speculative-config",
                '{"method":"mlp_speculator","num_speculative_tokens":1}') as server:
        assert server.wait_exit() == 1
        assert "ValueError: Unknown speculative decoding method: mlp_speculator" in server.log()


def test_max_model_len_above_the_kv_budget_fails_with_vllms_estimate(tmp_path):
    with replay(tmp_path, "v0.11-qwen3-8b", max_len=131072) as server:
        assert server.wait_exit() == 1
        log = server.log()
        assert "To serve at least one request with the models's max seq len (131072)" in log
        assert "the estimated maximum model length is 72448." in log
        assert "Application startup complete" not in log
    with replay(tmp_path, "v0.11-qwen3-8b", max_len=32768) as server:
        server.wait_ready()
        assert "GPU KV cache size: 72,448 tokens" in server.log()
        assert "Maximum concurrency for 32,768 tokens per request: 2.21x" in server.log()


def test_vl_dynamo_failure_processor_mismatch_and_text_only(tmp_path):
    image = [{"type": "image_url", "image_url": {"url": png_data_url()}}, {"type": "text", "text": "what?"}]
    with replay(tmp_path, "v0.23-vl-minicpmv", "--enforce-eager") as server:
        assert server.wait_exit() == 1, "eager does not avoid the vision encoder's Dynamo trace"
        assert "NPU contiguous operator only supported contiguous memory format" in server.log()
    with replay(tmp_path, "v0.23-vl-minicpmv", env={"TORCHDYNAMO_DISABLE": "1"}) as server:
        server.wait_ready()
        assert server.chat().status_code == 200
        reply = server.chat(image)
        assert reply.status_code == 500 and "skip_tensor_conversion" in reply.json()["error"]["message"]
        assert "got an unexpected keyword argument 'skip_tensor_conversion'" in server.log()
    with replay(tmp_path, "v0.23-vl-minicpmv", "--limit-mm-per-prompt", '{"image":0,"video":0,"audio":0}') as server:
        server.wait_ready()
        assert "running in text-only mode" in server.log()
        assert server.chat().status_code == 200 and server.chat(image).status_code == 400


def test_stream_exhaustion_during_capture_is_fixed_by_eager(tmp_path):
    with replay(tmp_path, "v0.20-stream-exhaustion") as server:
        assert server.wait_exit() == 1
        assert "AclmdlRICaptureBegin(capture_stream_, capture_mode), error code is 207005" in server.log()
    with replay(tmp_path, "v0.20-stream-exhaustion", "--enforce-eager") as server:
        server.wait_ready()


# ----------------------------------------------------------------------------- failures and signals
def test_false_ready_first_request_gets_500_and_the_process_exits(tmp_path):
    with replay(tmp_path, "v0.11-false-ready", tp=2) as server:
        server.wait_ready()
        assert requests.get(f"{server.url}/v1/models", timeout=2).status_code == 200
        started = time.monotonic()
        reply = server.chat()
        assert reply.status_code == 500
        assert reply.json()["error"] == {"message": "EngineCore encountered an issue. See stack trace (above) "
                                                    "for the root cause.", "type": "InternalServerError",
                                         "param": None, "code": 500}
        assert server.wait_exit(timeout=3) == 0 and time.monotonic() - started < 2.0
        log = server.log()
        worker = log.index("WorkerProc hit an exception.")
        root = log.index("RuntimeError: The Inner error is reported as above.")
        assert worker < root < log.index("EngineCore encountered a fatal error.")
        assert '"POST /v1/chat/completions HTTP/1.1" 500 Internal Server Error' in log


def test_sigterm_is_ignored_while_starting_and_honoured_once_ready(tmp_path):
    with replay(tmp_path, "v0.11-hccl-init-hang", speed="5") as server:
        server.wait_for("rank 3 in world size 4")
        os.killpg(server.proc.pid, signal.SIGTERM)
        time.sleep(0.6)
        assert server.proc.poll() is None, "vLLM does not stop for SIGTERM while its engine starts"
    with replay(tmp_path, "v0.11-qwen3-8b") as server:
        server.wait_ready()
        os.killpg(server.proc.pid, signal.SIGTERM)
        assert server.wait_exit(timeout=3) == 0
        assert server.log().rstrip().endswith("Finished server process [16762]")


def test_a_busy_silent_phase_burns_cpu_while_a_hang_sleeps(tmp_path):
    with replay(tmp_path, "v0.13-qwen3-30b-a3b", speed="1") as busy:
        busy.wait_for("Dynamo bytecode transform time")
        before, size = busy.utime(), len(busy.log())
        time.sleep(0.8)
        # a quarter of a core at least, on a machine the other tests keep busy; a hang takes none
        assert busy.utime() - before > 0.2, "compile is silent but the process works"
        assert len(busy.log()) == size, "and prints nothing"
    with replay(tmp_path, "v0.11-hccl-init-hang", speed="5") as hung:
        hung.wait_for("rank 3 in world size 4")
        time.sleep(0.2)
        before = hung.utime()
        time.sleep(0.8)
        assert hung.utime() - before < 0.1, "a hang neither prints nor works"


def test_hccl_timeout_waits_idle_then_reports_ei0006(tmp_path):
    with replay(tmp_path, "v0.13-hccl-timeout", speed="1") as server:
        server.wait_for("rank 0 in world size 2")
        time.sleep(0.2)
        before = server.utime()
        time.sleep(0.8)
        assert server.utime() - before < 0.1 and "EI0006" not in server.log(), "waiting for a socket is idle"
        assert server.wait_exit(timeout=8) == 1
        assert "Get_Socket_Timeout(EI0006): Getting socket times out." in server.log()


def test_oom_at_startup_exits_with_the_allocator_message(tmp_path):
    with replay(tmp_path, "v0.11-oom-startup") as server:
        assert server.wait_exit() == 1
        assert "RuntimeError: NPU out of memory. Tried to allocate 3.47 GiB" in server.log()


def test_port_clash_fails_at_once_like_vllm(tmp_path):
    with replay(tmp_path, "v0.11-qwen3-8b") as first:
        first.wait_ready()
        with replay(tmp_path, "v0.11-hccl-init-hang", port=first.port) as second:
            # SO_REUSEPORT (vLLM sets it too) lets a second server of the same user bind: it starts
            # and keeps starting, which is why the toolkit probes the port itself before starting.
            time.sleep(0.5)
            assert second.proc.poll() is None


def test_bad_scenario_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "REPLAY_SCENARIO": "no-such-scenario"}
    result = subprocess.run([PYTHON, "-m", "helpers.replay", "--model", "/m"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "unknown scenario 'no-such-scenario'" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("# Sources: none\nname: broken\nstartup:\n  - id: x\n    lines: [hello]\n")
    result = subprocess.run([PYTHON, "-m", "helpers.replay", "--model", "/m"], cwd=REPO, capture_output=True,
                            text=True, timeout=20, env={**env, "REPLAY_SCENARIO": str(broken)})
    assert result.returncode == 2 and "cites its source" in result.stderr


def test_box_facts_by_command():
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def box(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "helpers.replay.box", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=20)

    versions = box("--scenario", "v0.13-qwen3-30b-a3b", "--what", "versions").stdout.splitlines()
    assert "vllm==0.13.0" in versions and "vllm-ascend==0.13.0" in versions
    assert box("--scenario", "v0.11-qwen3-8b", "--what", "soc").stdout.strip() == "224"
    assert "910B4" in box("--scenario", "v0.11-qwen3-8b", "--what", "npu-smi").stdout
    assert box("--scenario", "main-qwen3-30b-a3b", "--marker", "FlashComm is deprecated").returncode == 0
    assert box("--scenario", "v0.13-qwen3-30b-a3b", "--marker", "FlashComm is deprecated").returncode == 1
    assert box("--scenario", "v0.11-qwen3-8b", "--module", "torch_npu").returncode == 0
    facts = json.loads(box("--scenario", "v0.23-deepseek-v3", "--json").stdout)
    assert facts["markers"]["enable_flashcomm1"] is True and facts["soc_version"] == 223
