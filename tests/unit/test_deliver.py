"""`make deliver` against small fake vllm-ascend checkouts (git init in a temp dir, MkDocs and
MyST) and fake implementation roots with a changes.json fixture of `make changes`' shape:
exactly one signed commit holding the model's vllm-ascend code, the YAML, the tutorial and the
nav/toctree entry; the vLLM root's changes as a patch under deliverables/; every refusal is one
line (exit 2, or 1 when the evidence does not sign off) and leaves the repo as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_env, run_cli, run_make
from helpers import deliver
from tests.fixtures.fake_delivery import (MKDOCS_YML, MYST_INDEX, VLLM_FILES, copy_evidence, git, make_repo,
                                          make_vllm_root, write_changes)


@pytest.fixture
def runs(tmp_path):
    return copy_evidence(tmp_path / "runs")


def deliver_env(runs: Path, repo: Path, model: str = "tiny-qwen2", **extra: str) -> dict[str, str]:
    # Only the repo's own config counts: the machine's global git config must not leak in.
    if model == "tiny-vl":  # it passed Stage B only with TORCHDYNAMO_DISABLE: that fallback is accepted
        extra.setdefault("ACCEPT_FALLBACK", "dynamo")
    return base_env(runs, MODEL=model, DELIVERY_REPO=str(repo), GIT_CONFIG_GLOBAL="/dev/null",
                    GIT_CONFIG_NOSYSTEM="1", **extra)


def commits_ahead(repo: Path) -> list[str]:
    return git(repo, "rev-list", "main..HEAD").stdout.split()


def one_line_refusal(result, needle: str, code: int = 2) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert needle in lines[0], lines[0]


ASCEND_PATCH = {"root": "vllm-ascend", "path": "vllm_ascend/patch_model.py", "status": "added",
                "kind": "vllm-ascend backend patch", "minimal": True}


def with_code(runs: Path, model: str, repo: Path, tmp_path: Path) -> Path:
    """The delivery repo IS the vllm-ascend root (a backend patch added there); a vLLM root with a
    new model file and a registry edit; changes.json listing all three. Returns the vLLM root."""
    (repo / "vllm_ascend/patch_model.py").write_text("# the minimal backend patch\n")
    vllm_root = make_vllm_root(tmp_path)
    write_changes(runs, model, {"vllm": vllm_root, "vllm-ascend": repo}, VLLM_FILES + [ASCEND_PATCH])
    return vllm_root


@pytest.mark.parametrize("kind, model", [("mkdocs", "tiny-qwen2"), ("myst", "tiny-vl")])
def test_one_signed_commit_with_the_backend_patch_yaml_tutorial_nav_and_a_vllm_patch(runs, tmp_path, kind, model):
    repo = make_repo(tmp_path, kind)
    vllm_root = with_code(runs, model, repo, tmp_path)
    vllm_status = git(vllm_root, "status", "--porcelain").stdout
    result = run_make("deliver", deliver_env(runs, repo, model))
    assert result.returncode == 0, result.stderr
    ahead = commits_ahead(repo)
    assert len(ahead) == 1
    assert ahead[0] in result.stdout  # the hash is printed
    body = git(repo, "log", "-1", "--format=%B").stdout
    assert body.startswith(f"[Model] Support {model}\n")  # upstream's title prefix: the commit carries code
    assert "### What this PR does / why we need it?" in body and "### How was this patch tested?" in body
    assert "Stage B (real weights, every layer): PASS" in body
    assert body.rstrip().endswith("Signed-off-by: Test Engineer <test@example.com>")  # no custom trailer
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").stdout.split())
    nav = "mkdocs.yml" if kind == "mkdocs" else "docs/source/tutorials/models/index.md"
    expected = {f"tests/e2e/models/configs/{model}.yaml", f"docs/source/tutorials/models/{model}.md",
                nav, "vllm_ascend/patch_model.py", "tests/e2e/models/configs/accuracy.txt",
                "vllm_ascend/models/tiny_new.py", "vllm_ascend/models/__init__.py"}
    nightly = (repo / "tests/e2e/models/configs/accuracy.txt").read_text().splitlines()
    assert nightly == ["Qwen3-8B.yaml", f"{model}.yaml"]  # listed once, after the existing entries
    assert files == expected
    for path in expected:
        assert path in result.stdout  # the file list is printed
    assert git(repo, "status", "--porcelain").stdout == ""
    delivered = (repo / f"docs/source/tutorials/models/{model}.md").read_text()
    assert delivered == (runs / model / f"deliverables/docs/source/tutorials/models/{model}.md").read_text()
    # the adapter written in the vLLM root moves into vllm-ascend's registration, imports made absolute
    moved = (repo / "vllm_ascend/models/tiny_new.py").read_text()
    assert moved.startswith("from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM\n")
    assert ('"TinyNewForCausalLM",\n        "vllm_ascend.models.tiny_new:TinyNewForCausalLM")'
            in (repo / "vllm_ascend/models/__init__.py").read_text())
    assert "moved from the vLLM root: vllm/model_executor/models/tiny_new.py -> vllm_ascend/models/tiny_new.py" \
        in result.stdout
    # what vllm-ascend cannot carry stays one patch under deliverables/, with its reason; the root untouched
    patch = runs / model / "deliverables/vllm-changes.patch"
    text = patch.read_text()
    assert "b/vllm/transformers_utils/processors/tiny_new.py" in text
    assert "models/tiny_new.py" not in text and "registry.py" not in text
    assert git(vllm_root, "apply", "--check", "-R", str(patch)).returncode == 0  # exactly the root's diff
    assert git(vllm_root, "status", "--porcelain").stdout == vllm_status
    assert "vllm/transformers_utils/processors/tiny_new.py: a new vLLM file no registry entry" in result.stdout
    assert "Needs a vLLM change" in body and "vllm/transformers_utils/processors/tiny_new.py" in body
    # the record of the commit, and the documents rendered again with its hash
    record = json.loads((runs / model / "deliverables/deliver.json").read_text())
    assert record["commit"] == ahead[0] and record["mode"] == "in-place"
    report = (runs / model / "deliverables/report.zh.md").read_text()
    assert ahead[0] in report and "需要 vLLM 改动" in report and "`vllm/model_executor/models/registry.py`" in report
    assert ahead[0] in (runs / model / "deliverables/issue-comment.zh.md").read_text()


def test_backport_into_a_repo_that_is_neither_root(runs, tmp_path):
    """The vllm-ascend root's minimal diff (new and changed files, from its recorded base) is
    applied to the delivery repo; a file outside the minimal set stays out; the root is untouched."""
    root = make_repo(tmp_path / "impl", "mkdocs")
    (root / "vllm_ascend/__init__.py").write_text("TINY = True\n")
    (root / "vllm_ascend/ops").mkdir()
    (root / "vllm_ascend/ops/tiny_op.py").write_text("def tiny_op():\n    return 1\n")
    (root / "scratch.py").write_text("print('debug')\n")
    write_changes(runs, "tiny-qwen2", {"vllm-ascend": root}, [
        {"root": "vllm-ascend", "path": "vllm_ascend/__init__.py", "status": "modified", "kind": "vllm-ascend backend patch",
         "minimal": True},
        {"root": "vllm-ascend", "path": "vllm_ascend/ops/tiny_op.py", "status": "added", "kind": "vllm-ascend backend patch",
         "minimal": True},
        {"root": "vllm-ascend", "path": "scratch.py", "status": "added", "kind": "other", "minimal": False}])
    repo = make_repo(tmp_path / "delivery", "mkdocs")
    result = run_make("deliver", deliver_env(runs, repo))
    assert result.returncode == 0, result.stderr
    assert len(commits_ahead(repo)) == 1
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").stdout.split())
    assert {"vllm_ascend/__init__.py", "vllm_ascend/ops/tiny_op.py"} <= files and "scratch.py" not in files
    assert (repo / "vllm_ascend/ops/tiny_op.py").read_text() == "def tiny_op():\n    return 1\n"
    assert "left out (outside the minimal set): vllm-ascend: scratch.py" in result.stdout
    assert json.loads((runs / "tiny-qwen2/deliverables/deliver.json").read_text())["mode"] == "backport"
    assert not (runs / "tiny-qwen2/deliverables/vllm-changes.patch").exists()
    assert "scratch.py" in git(root, "status", "--porcelain").stdout  # the root keeps its work


def test_docs_only_commit_is_titled_as_docs(runs, tmp_path):
    repo = make_repo(tmp_path, "mkdocs")
    assert run_make("deliver", deliver_env(runs, repo)).returncode == 0
    title = git(repo, "log", "-1", "--format=%s").stdout.strip()
    assert title == "[Doc][Model] Add tiny-qwen2 tutorial and accuracy config"


def test_mkdocs_nav_edit_inserts_one_line_and_is_idempotent(tmp_path):
    repo = make_repo(tmp_path, "mkdocs")
    docs = deliver.detect_docs_system(repo)
    text, changed = deliver.add_nav_entry(docs, "tiny-qwen2", "tiny-qwen2")
    assert changed
    before, after = MKDOCS_YML.splitlines(), text.splitlines()
    assert len(after) == len(before) + 1
    added = [line for line in after if line not in before]
    assert added == ["        - tutorials/models/tiny-qwen2.md"]
    assert after.index(added[0]) == after.index("        - tutorials/models/DeepSeek-V3.1.md") + 1
    (repo / "mkdocs.yml").write_text(text)
    again, changed_again = deliver.add_nav_entry(deliver.detect_docs_system(repo), "tiny-qwen2", "tiny-qwen2")
    assert not changed_again and again == text


def test_myst_toctree_edit_is_idempotent(tmp_path):
    repo = make_repo(tmp_path, "myst")
    docs = deliver.detect_docs_system(repo)
    text, changed = deliver.add_nav_entry(docs, "tiny-vl", "tiny-vl")
    assert changed and text == MYST_INDEX.replace("DeepSeek-V3.1\n:::", "DeepSeek-V3.1\ntiny-vl\n:::")
    docs.nav_file.write_text(text)
    assert deliver.add_nav_entry(docs, "tiny-vl", "tiny-vl") == (text, False)


def test_second_delivery_on_the_branch_is_refused(runs, tmp_path):
    repo = make_repo(tmp_path, "mkdocs")
    env = deliver_env(runs, repo)
    assert run_make("deliver", env).returncode == 0
    first = commits_ahead(repo)
    (repo / "vllm_ascend/more.py").write_text("# a later fix\n")
    write_changes(runs, "tiny-qwen2", {"vllm-ascend": repo}, [dict(ASCEND_PATCH, path="vllm_ascend/more.py")])
    result = run_cli(["deliver"], env, timeout=60)  # the CLI: make turns every failure into 2
    one_line_refusal(result, "already has a bring-up commit for tiny-qwen2")
    assert commits_ahead(repo) == first
    assert (repo / "mkdocs.yml").read_text().count("tutorials/models/tiny-qwen2.md") == 1


def test_upstream_tracking_branch_counts_only_commits_ahead(runs, tmp_path):
    """A delivery already merged upstream is not "a second commit" on a new branch."""
    repo = make_repo(tmp_path, "mkdocs")
    assert run_make("deliver", deliver_env(runs, repo)).returncode == 0
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--ff-only", "bringup")
    git(repo, "checkout", "-q", "-b", "bringup-2")
    git(repo, "branch", "-q", "--set-upstream-to=main")
    (repo / "vllm_ascend/fix.py").write_text("# follow-up\n")
    write_changes(runs, "tiny-qwen2", {"vllm-ascend": repo}, [dict(ASCEND_PATCH, path="vllm_ascend/fix.py")])
    result = run_make("deliver", deliver_env(runs, repo))
    # Same files already delivered upstream: the new commit holds the listed code change only.
    assert result.returncode == 0, result.stderr
    assert git(repo, "rev-list", "--count", "main..HEAD").stdout.strip() == "1"
    assert git(repo, "show", "--name-only", "--format=", "HEAD").stdout.split() == ["vllm_ascend/fix.py"]


@pytest.mark.parametrize("case, needle", [
    ("untracked", "changes that are not part of this delivery: ?? notes.txt"),
    ("unstaged", "changes that are not part of this delivery: M vllm_ascend/__init__.py"),
    ("staged", "changes that are not part of this delivery: A vllm_ascend/stray.py"),
    ("staged-unlisted", "changes that are not part of this delivery: A vllm_ascend/stray.py"),
    ("committed", "vllm_ascend/patch_model.py is already committed on this branch"),
    ("stale", "changes.json lists vllm_ascend/patch_model.py but DELIVERY_REPO has no change to it"),
    ("identity", "git user.name and user.email not set"),
    ("not-git", "is not a git repository"),
    ("no-docs", "cannot tell its docs system"),
    ("unset", "DELIVERY_REPO is not set"),
])
def test_refusals_are_one_line_and_leave_the_repo_untouched(runs, tmp_path, case, needle):
    repo = make_repo(tmp_path, "none" if case == "no-docs" else "mkdocs", identity=case != "identity")
    if case == "untracked":
        (repo / "notes.txt").write_text("scratch\n")
    if case == "unstaged":
        (repo / "vllm_ascend/__init__.py").write_text("x = 1\n")
    if case.startswith("staged"):  # staged code that changes.json does not list (or no changes.json)
        (repo / "vllm_ascend/stray.py").write_text("x = 1\n")
        git(repo, "add", "vllm_ascend/stray.py")
        if case == "staged-unlisted":
            write_changes(runs, "tiny-qwen2", {"vllm-ascend": repo}, [ASCEND_PATCH])
            (repo / "vllm_ascend/patch_model.py").write_text("# listed\n")
    if case in ("committed", "stale"):
        write_changes(runs, "tiny-qwen2", {"vllm-ascend": repo}, [ASCEND_PATCH])
    if case == "committed":  # the code went into an earlier commit: the delivery would miss it
        (repo / "vllm_ascend/patch_model.py").write_text("# committed too early\n")
        git(repo, "add", "vllm_ascend/patch_model.py")
        git(repo, "commit", "-q", "-m", "wip")
    target = repo
    if case == "not-git":
        target = tmp_path / "plain"
        target.mkdir()
    env = deliver_env(runs, target)
    if case == "unset":
        env["DELIVERY_REPO"] = ""
    head = git(repo, "rev-parse", "HEAD").stdout
    status = git(repo, "status", "--porcelain").stdout
    result = run_cli(["deliver"], env, timeout=60)  # the CLI: make turns every failure into 2
    one_line_refusal(result, needle)
    assert git(repo, "rev-parse", "HEAD").stdout == head
    assert git(repo, "status", "--porcelain").stdout == status


def test_dummy_only_evidence_never_delivers(runs, tmp_path):
    repo = make_repo(tmp_path, "mkdocs")
    result = run_cli(["deliver"], deliver_env(runs, repo, "tiny-dummy-only"), timeout=60)
    one_line_refusal(result, "sign-off refused for tiny-dummy-only: no full-layer Stage B PASS", code=1)
    assert commits_ahead(repo) == []
    assert "tiny-dummy-only" not in (repo / "mkdocs.yml").read_text()


def fake_gh(bin_dir: Path, logged_in: bool) -> Path:
    """A `gh` stand-in: `auth status` answers as asked, `issue comment` records its argv and
    prints the comment URL as gh does."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "gh.log"
    script = bin_dir / "gh"
    script.write_text("#!/usr/bin/env bash\n"
                      f"echo \"$*\" >>{log}\n"
                      f"if [[ $1 == auth ]]; then exit {0 if logged_in else 1}; fi\n"
                      "echo \"$3#issuecomment-1\"\n")
    script.chmod(0o755)
    return log


@pytest.mark.parametrize("logged_in", [True, False])
def test_the_issue_comment_is_posted_with_gh_or_its_command_printed(runs, tmp_path, logged_in):
    repo = make_repo(tmp_path, "mkdocs")
    log = fake_gh(tmp_path / "bin", logged_in)
    issue = "https://github.com/vllm-project/vllm-ascend/issues/99999"
    env = deliver_env(runs, repo, ISSUE_URL=issue)
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    result = run_cli(["deliver"], env)
    assert result.returncode == 0, result.stderr
    comment = runs / "tiny-qwen2" / "deliverables" / "issue-comment.zh.md"
    record = json.loads((runs / "tiny-qwen2" / "deliverables/deliver.json").read_text())["issue_comment"]
    if logged_in:
        assert f"issue comment {issue} --body-file {comment}" in log.read_text()
        assert f"issue comment posted: {issue}#issuecomment-1" in result.stdout and record["posted"] is True
    else:
        assert "issue comment" not in log.read_text().replace("auth status", "")
        assert f"not posted: gh is not logged in" in result.stdout and record["posted"] is False
        assert f"post it with: gh issue comment {issue} --body-file {comment}" in result.stdout


def test_without_an_issue_url_the_comment_file_and_command_are_printed(runs, tmp_path):
    repo = make_repo(tmp_path, "mkdocs")
    result = run_cli(["deliver"], deliver_env(runs, repo))
    assert result.returncode == 0, result.stderr
    comment = runs / "tiny-qwen2" / "deliverables" / "issue-comment.zh.md"
    assert f"issue comment: {comment} (not posted: ISSUE_URL is not set)" in result.stdout
    assert f"post it with: gh issue comment '<ISSUE_URL>' --body-file {comment}" in result.stdout
