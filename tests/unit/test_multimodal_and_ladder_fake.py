"""Multimodal requests, feature-evidence verdicts and the fallback ladder's control flow, driven
through the real stage runner with the fake launcher (tests/fixtures/fake_server.py via the
test-only `fake` profile). A VL model cannot be served on this machine (vLLM's CPU build has no
torchvision), and a model that fails only under Dynamo cannot be produced on demand; the fake
server checks the image part (a decodable PNG data URL) and fails at startup unless
--enforce-eager / TORCHDYNAMO_DISABLE=1 are really in its argv / environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, base_env, free_port_between, run_cli
from helpers import tinymodel


def fake_env(runs_dir: Path, model: Path, **extra: str) -> dict[str, str]:
    return base_env(runs_dir, BRINGUP_PROFILE_DIR=str(REPO / "tests/fixtures/profiles"), BACKEND="fake",
                    MODEL=str(model), PORT=str(free_port_between(18440, 18499)), READY_TIMEOUT="60", STALL_TIMEOUT="30",
                    REQUEST_TIMEOUT="30", STAGE="a", **extra)


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory) -> Path:
    return tinymodel.generate(tmp_path_factory.mktemp("fake-vl") / "tiny-vl", weights="dummy",
                              spec=tinymodel.TinySpec(kind="vl"))


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory) -> Path:
    return tinymodel.generate(tmp_path_factory.mktemp("fake-moe") / "tiny-moe", weights="dummy",
                              spec=tinymodel.TinySpec(kind="moe"))


@pytest.fixture
def text_model(tmp_path) -> Path:
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FakeForCausalLM"]}))
    return model


def record(runs_dir: Path, model: str, step: str) -> dict:
    return json.loads((runs_dir / model / f"latest-{step}" / "evidence.json").read_text())


# --- multimodal ---------------------------------------------------------------------------------

def test_vl_stage_sends_a_png_data_url_and_passes_on_200_with_text(runs_dir, vl_model):
    result = run_cli(["stage", "--stage", "a"], fake_env(runs_dir, vl_model))
    assert result.returncode == 0, result.stdout + result.stderr
    rec = record(runs_dir, "tiny-vl", "stage-a")
    assert rec["multimodal"] is True
    assert [r["kind"] for r in rec["requests"]] == ["text", "stream", "image"]
    image = rec["requests"][2]
    assert image["status"] == 200 and image["content"] == "a colourful gradient"
    sent = [json.loads(x) for x in (Path(rec["run_dir"]) / "requests.jsonl").read_text().splitlines()][2]
    url = sent["payload"]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


@pytest.mark.parametrize("mode, category, text", [
    ("empty", "empty-output", "image: empty output"),
    # the server stays up and serves text: the image path failed, the start was no false ready
    ("error-500", "image-request-failed", "fake processor failure"),
])
def test_vl_stage_fails_when_the_image_request_fails(runs_dir, vl_model, mode, category, text):
    result = run_cli(["stage", "--stage", "a"], fake_env(runs_dir, vl_model, FAKE_IMAGE=mode))
    assert result.returncode == 1
    rec = record(runs_dir, "tiny-vl", "stage-a")
    assert rec["verdict"] == "FAIL" and rec["category"] == category
    assert text in rec["reason"]


def test_text_only_gate_on_a_vl_model_skips_the_image_and_proves_text_only_mode(runs_dir, vl_model):
    result = run_cli(["gate", "text-only"], fake_env(runs_dir, vl_model))
    assert result.returncode == 0, result.stdout + result.stderr
    rec = record(runs_dir, "tiny-vl", "text-only")
    assert rec["verdict"] == "PASS"
    assert [r["kind"] for r in rec["requests"]] == ["text", "stream"]
    assert "running in text-only mode" in rec["feature_evidence"]["line"]
    assert rec["command"]["argv"][-2:] == ["--limit-mm-per-prompt", '{"image":0,"video":0,"audio":0}']


# --- feature evidence ---------------------------------------------------------------------------

def test_ep_gate_fails_the_feature_when_the_server_passes_without_ep_evidence(runs_dir, moe_model):
    result = run_cli(["gate", "ep"], fake_env(runs_dir, moe_model))
    assert result.returncode == 1
    rec = record(runs_dir, "tiny-moe", "ep")
    assert "--enable-expert-parallel" in rec["command"]["argv"]
    assert all(r["ok"] for r in rec["requests"]), "the server itself answered"
    assert rec["verdict"] == "FAIL" and rec["category"] == "feature-not-active"
    assert "ep is not proven" in rec["reason"]
    assert result.stdout.count("FAIL ep tiny-moe") == 1 and "PASS ep" not in result.stdout


def test_eager_gate_records_the_eager_line(runs_dir, text_model):
    result = run_cli(["gate", "eager"], fake_env(runs_dir, text_model))
    assert result.returncode == 0, result.stdout + result.stderr
    rec = record(runs_dir, "fake-model", "eager")
    assert rec["feature_evidence"]["line"].endswith("Cudagraph is disabled under eager mode")
    assert rec["feature_evidence"]["line_no"] > 0


# --- the ladder's control flow -------------------------------------------------------------------

def test_ladder_stops_at_eager_when_only_eager_starts(runs_dir, text_model):
    env = fake_env(runs_dir, text_model, FAKE_MODE="needs-eager")
    assert run_cli(["stage", "--stage", "a"], env).returncode == 1  # the failure the ladder starts from
    result = run_cli(["ladder"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((runs_dir / "fake-model" / "latest-ladder" / "ladder.json").read_text())
    # xlite: the fake backend captures no graphs, so the XliteGraph rung does not apply
    # graph-keeping: the fake failure is no graph capture or replay fault, so fewer captures cannot help
    assert [(r["rung"], r["verdict"]) for r in summary["rungs"]] == [("reproduce", "FAIL"), ("xlite", "SKIPPED"),
                                                                      ("graph-keeping", "SKIPPED"), ("eager", "PASS")]
    assert summary["fixed_by"] == "eager" and summary["deterministic"] is True
    assert summary["moved"] == []
    assert "fixed by rung: eager" in result.stdout
    assert summary["moved_away"]["rung"] == "eager" and "failure moved away at rung eager" in result.stdout
    for row in summary["rungs"]:
        if row["verdict"] != "SKIPPED":
            assert record(runs_dir, "fake-model", f"ladder-{row['rung']}")["run_dir"] == row["run_dir"]
    assert "--enforce-eager" not in record(runs_dir, "fake-model", "ladder-reproduce")["command"]["argv"]


def test_ladder_tries_dynamo_disable_after_a_dynamo_signature_and_skips_text_only(runs_dir, text_model):
    result = run_cli(["ladder"], fake_env(runs_dir, text_model, FAKE_MODE="dynamo-error"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((runs_dir / "fake-model" / "latest-ladder" / "ladder.json").read_text())
    assert [(r["rung"], r["verdict"]) for r in summary["rungs"]] == [
        ("reproduce", "FAIL"), ("xlite", "SKIPPED"), ("graph-keeping", "SKIPPED"), ("eager", "FAIL"),
        ("dynamo-disable", "PASS")]
    assert "dynamo-related failure" in summary["rungs"][4]["applies_because"]
    assert summary["deterministic"] is None, "no earlier stage-a run to compare with"
    assert summary["fixed_by"] == "dynamo-disable"


def test_ladder_skips_dynamo_when_unrelated_reaches_text_only_and_reports_the_move(runs_dir, vl_model):
    # The image request fails (a processor-side failure) on every rung until text-only isolation.
    result = run_cli(["ladder"], fake_env(runs_dir, vl_model, FAKE_IMAGE="error-500"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((runs_dir / "tiny-vl" / "latest-ladder" / "ladder.json").read_text())
    assert [(r["rung"], r["verdict"]) for r in summary["rungs"]] == [
        ("reproduce", "FAIL"), ("xlite", "SKIPPED"), ("graph-keeping", "SKIPPED"), ("eager", "FAIL"),
        ("dynamo-disable", "SKIPPED"), ("text-only", "PASS")]
    assert "not dynamo-related" in summary["rungs"][4]["reason"]
    # text-only switches the multimodal path off: it isolates the failure there, it fixes nothing
    assert summary["fixed_by"] is None and summary["isolated_by"]["rung"] == "text-only"
    assert "isolated to the multimodal path" in result.stdout and "fixed by" not in result.stdout


def test_ladder_with_no_passing_rung_exits_1_and_says_what_next(runs_dir, text_model):
    env = fake_env(runs_dir, text_model, FAKE_MODE="die-after-start", FAKE_DELAY="0.2", LADDER_DYNAMO="always")
    result = run_cli(["ladder"], env)
    assert result.returncode == 1
    summary = json.loads((runs_dir / "fake-model" / "latest-ladder" / "ladder.json").read_text())
    assert [r["verdict"] for r in summary["rungs"]] == ["FAIL", "SKIPPED", "SKIPPED", "FAIL", "FAIL", "SKIPPED"]
    assert summary["fixed_by"] is None and summary["status"] == "done"
    assert "no rung passed" in result.stdout
    assert "failure moved: no" in result.stdout


def test_ladder_reports_a_moved_failure():
    from helpers import ladder

    def row(rung, verdict, sig):
        return {"rung": rung, "verdict": verdict, "run_dir": f"/r/{rung}", "signature": sig}

    processor = {"category": "processor", "sig_id": "skip-tensor-conversion", "exception": "TypeError", "text": "a"}
    core = {"category": "model-code", "sig_id": "meta-tensor-copy", "exception": "NotImplementedError", "text": "b"}
    summary = {"original": {"run_dir": "/r/orig", "signature": processor},
               "rungs": [row("reproduce", "FAIL", processor), row("eager", "FAIL", processor),
                         row("text-only", "FAIL", core)]}
    ladder.summarise(summary)
    assert summary["deterministic"] is True and summary["fixed_by"] is None
    assert summary["moved"] == [{"from_rung": "eager", "to_rung": "text-only",
                                 "from": ladder.describe(processor), "to": ladder.describe(core)}]
