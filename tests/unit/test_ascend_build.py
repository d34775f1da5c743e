"""Which vllm-ascend build is installed (helpers/ascend_build.py) and what the version-bound facts
say about it: every form a real install reports, builds between releases placed by their root's
git state (real git repositories made in tmp_path), else unknown and decided by source markers.
Pure apart from `git` on those tmp repositories; no server starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import ascend_build, ascend_facts, graphmode, profiles

FACTS = ascend_facts.load()
TORCHAIR = ["vllm", "serve", "/m", "--additional-config={\"torchair_graph_config\": {\"enabled\": true}}"]
MAIN_SOURCE = {"FP8_METHOD": True, "torchair_graph_config": False, "class AclGraphManager": False,
               "run_fullgraph with num_tokens": True}.get


@pytest.mark.parametrize("reported, release, dev, local, is_release", [
    ("0.13.0", "0.13.0", None, None, True),
    ("0.21.0rc1", "0.21.0rc1", None, None, True),
    ("v0.11.0rc3", "0.11.0rc3", None, None, True),
    ("0.19.1rc2.dev1637+g182b75ea84", "0.19.1rc2", 1637, "g182b75ea84", False),   # main at 182b75ea84
    ("0.19.1rc2.dev1637+g182b75ea84.d20261204", "0.19.1rc2", 1637, "g182b75ea84.d20261204", False),  # dirty
    ("0.21.0rc1+d20261204", "0.21.0rc1", None, "d20261204", True),                # a dirty tree on a tag
    ("2.10.0.post4", "2.10.0", None, None, True),
    ("0.0.0", "0.0.0", None, None, False),                                         # no tag: setup.py@main:431
])
def test_every_form_a_real_install_reports_is_parsed(reported, release, dev, local, is_release):
    build = ascend_build.parse(reported)
    assert (build.release, build.dev, build.local, build.is_release) == (release, dev, local, is_release)


@pytest.mark.parametrize("reported", ["0.26.0rc1.dev+g182b75ea84", "main", "0.19.x", "8.3.RC1", ""])
def test_a_version_the_parser_does_not_understand_is_refused_not_guessed(reported):
    with pytest.raises(ValueError, match="is not understood"):
        ascend_build.parse(reported)


def test_a_build_between_releases_is_not_read_as_its_old_number():
    for reported in ("0.19.1rc2.dev1637+g182b75ea84", "0.0.0"):
        assert FACTS["fp8-accepted"].holds_for(reported) is None
        assert FACTS["quantization-not-supported-npu"].holds_for(reported) is None
        assert FACTS["torchair-dropped"].holds_for(reported) is None
        assert "unknown build" in ascend_build.parse(reported).describe()
    assert FACTS["fp8-accepted"].holds_for("0.21.0rc1") and not FACTS["fp8-accepted"].holds_for("0.20.2rc1")


def test_source_markers_decide_before_the_version():
    for reported in ("0.19.1rc2.dev1637+g182b75ea84", "0.0.0"):
        assert FACTS["fp8-accepted"].decide(reported, lambda _p, text: MAIN_SOURCE(text))[0] is True
        assert FACTS["quantization-not-supported-npu"].decide(reported, lambda _p, t: MAIN_SOURCE(t))[0] is False
        assert FACTS["torchair-dropped"].decide(reported, lambda _p, t: MAIN_SOURCE(t))[0] is False
    held, why = FACTS["fp8-accepted"].decide("0.0.0", lambda _p, _t: None)
    assert held is None and "unknown build" in why


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def _repo(tmp_path: Path, branch: str) -> Path:
    root = tmp_path / "vllm-ascend"
    root.mkdir()
    _git(root, "init", "-q", "-b", branch)
    (root / "setup.py").write_text("# placeholder\n")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "c")
    return root


def test_a_main_checkout_places_the_build_on_main(tmp_path):
    build = ascend_build.identify("0.19.1rc2.dev1637+g182b75ea84", _repo(tmp_path, "main"))
    assert build.placed == "main" and "main-branch build" in build.describe()
    assert FACTS["fp8-accepted"].holds_for(build) is True
    assert FACTS["torchair-dropped"].holds_for(build) is False
    assert FACTS["flashcomm1-removed-main"].holds_for(build) is True
    assert FACTS["ep-enabled-line-ascend-v021"].holds_for(build) is False   # gone from v0.24.0rc1 on


def test_a_detached_head_on_main_and_a_release_branch_are_placed(tmp_path):
    root = _repo(tmp_path, "main")
    _git(root, "checkout", "-q", "--detach")
    assert ascend_build.identify("0.0.0", root).placed == "main"
    _git(root, "checkout", "-q", "-b", "releases/v0.26.0rc")
    build = ascend_build.identify("0.19.1rc2.dev1373+gabcdef1234", root)
    assert build.placed == "0.26.0rc1" and FACTS["fp8-accepted"].holds_for(build) is True


def test_without_a_root_or_on_a_feature_branch_the_build_stays_unknown(tmp_path):
    assert ascend_build.identify("0.0.0", None).placed is None
    assert ascend_build.identify("0.0.0", _repo(tmp_path, "my-fix")).placed is None
    assert ascend_build.identify("0.13.0", tmp_path / "absent").is_release


@pytest.mark.parametrize("version, probe, mode", [
    ("0.11.0rc3", None, "torchair"),
    ("0.13.0", None, "default"),
    ("0.19.1rc2.dev1637+g182b75ea84", MAIN_SOURCE, "default"),
    ("0.0.0", MAIN_SOURCE, "default"),
])
def test_torchair_is_never_accepted_on_a_build_whose_source_lacks_it(version, probe, mode):
    graph = profiles.load("ascend").graph
    source = (lambda _p, text: probe(text)) if probe else None
    assert graphmode.select(graph, TORCHAIR, {}, {"vllm-ascend": version}, source).id == mode


@pytest.mark.parametrize("version, probe, mode", [
    ("0.15.0rc1", None, "mrv2-no-replay-line"),
    ("0.18.0", None, "default"),
    ("0.19.1rc2.dev1637+g182b75ea84", MAIN_SOURCE, "default"),    # main logs run_fullgraph: the replay proves it
    ("0.0.0", None, "mrv2-no-replay-line"),                        # nothing tells: the command's mode stands
])
def test_model_runner_v2_on_a_main_build_still_needs_its_replay_line(version, probe, mode):
    graph = profiles.load("ascend").graph
    source = (lambda _p, text: probe(text)) if probe else None
    assert graphmode.select(graph, ["vllm", "serve", "/m"], {"VLLM_USE_V2_MODEL_RUNNER": "1"},
                            {"vllm-ascend": version}, source).id == mode


def test_a_marker_needs_all_its_texts_and_is_refused_when_malformed():
    fact = FACTS["mrv2-no-replay-line"]
    v016 = {"class AclGraphManager": True, "run_fullgraph with num_tokens": False}.get
    assert fact.decide("0.0.0", lambda _p, t: v016(t))[0] is True
    assert fact.decide("0.0.0", lambda _p, t: MAIN_SOURCE(t))[0] is False
    with pytest.raises(ValueError, match="marker must be"):
        ascend_facts.parse({"facts": [{"id": "x-fact", "statement": "s", "holds": {"package": "vllm-ascend",
                                       "range": "*"}, "source": ["PR #1"], "verified": True,
                                       "marker": {"has": "x"}}]})
