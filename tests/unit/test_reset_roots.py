"""`make reset-roots`: both implementation roots back to HEAD on explicit request only, with
everything a reset would lose saved under runs/ first. Real git work trees made in tmp_path
(tests/fixtures/fake_roots.py); nothing starts a server."""

from __future__ import annotations

import json
import subprocess

from conftest import base_env, run_cli, run_make
from tests.fixtures.fake_roots import git, make_roots, write


def dirty_roots(tmp_path):
    vllm, ascend = make_roots(tmp_path / "roots")
    write(vllm, "vllm/model_executor/models/llama.py", "class LlamaForCausalLM:\n    changed = True\n")
    write(ascend, "vllm_ascend/models/new_model.py", "class NewModel:\n    pass\n")
    return vllm, ascend


def test_without_confirm_nothing_is_touched(tmp_path):
    vllm, ascend = dirty_roots(tmp_path)
    env = base_env(tmp_path / "runs", VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend))
    result = run_make("reset-roots", env)
    assert result.returncode == 2 and "Error 2" in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == ["error: make reset-roots discards the uncommitted changes of VLLM_SRC and VLLM_ASCEND_SRC: "
                     "it runs only with CONFIRM=yes (see them first with `make context`, then run "
                     "`make reset-roots CONFIRM=yes`)"]
    assert git(vllm, "status", "--porcelain") and git(ascend, "status", "--porcelain")
    assert not (tmp_path / "runs" / "implementation-roots").exists()


def test_confirmed_reset_saves_the_diff_and_untracked_files_first(tmp_path):
    vllm, ascend = dirty_roots(tmp_path)
    runs = tmp_path / "runs"
    result = run_cli(["reset-roots"], base_env(runs, VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend), CONFIRM="yes"))
    assert result.returncode == 0, result.stderr
    assert git(vllm, "status", "--porcelain") == "" and git(ascend, "status", "--porcelain") == ""
    [saved] = list((runs / "implementation-roots").iterdir())
    assert (saved / "vllm-ascend-untracked" / "vllm_ascend/models/new_model.py").read_text() == \
        "class NewModel:\n    pass\n"
    manifest = json.loads((saved / "reset-roots.json").read_text())
    assert [r["reset"] for r in manifest["roots"]] == [True, True]
    assert manifest["roots"][0]["dirty"] == [" M vllm/model_executor/models/llama.py"]
    # the saved diff gives the change back
    subprocess.run(["git", "-C", str(vllm), "apply", str(saved / "vllm.diff")], check=True)
    assert "changed = True" in (vllm / "vllm/model_executor/models/llama.py").read_text()
    assert f"saved under {saved}" in result.stdout


def test_clean_roots_are_left_alone_and_nothing_is_written(tmp_path):
    vllm, ascend = make_roots(tmp_path / "roots")
    runs = tmp_path / "runs"
    result = run_cli(["reset-roots"], base_env(runs, VLLM_SRC=str(vllm), VLLM_ASCEND_SRC=str(ascend), CONFIRM="yes"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("clean: nothing to save or reset") == 2
    assert not (runs / "implementation-roots").exists()
