"""`make deliver` against small fake vllm-ascend checkouts (git init in a temp dir, MkDocs and
MyST): exactly one signed commit holding the YAML, the tutorial, the nav/toctree entry and the
code changes already staged; every refusal is one line with exit 2 and leaves the repo as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import base_env, run_cli, run_make
from helpers import deliver
from tests.fixtures.fake_delivery import MKDOCS_YML, MYST_INDEX, copy_evidence, git, make_repo


@pytest.fixture
def runs(tmp_path):
    return copy_evidence(tmp_path / "runs")


def deliver_env(runs: Path, repo: Path, model: str = "tiny-qwen2", **extra: str) -> dict[str, str]:
    # Only the repo's own config counts: the machine's global git config must not leak in.
    return base_env(runs, MODEL=model, DELIVERY_REPO=str(repo), GIT_CONFIG_GLOBAL="/dev/null",
                    GIT_CONFIG_NOSYSTEM="1", **extra)


def commits_ahead(repo: Path) -> list[str]:
    return git(repo, "rev-list", "main..HEAD").stdout.split()


def one_line_refusal(result, needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("kind, model", [("mkdocs", "tiny-qwen2"), ("myst", "tiny-vl")])
def test_one_signed_commit_with_docs_yaml_nav_and_staged_code(runs, tmp_path, kind, model):
    repo = make_repo(tmp_path, kind)
    (repo / "vllm_ascend/patch_model.py").write_text("# the minimal code change\n")
    git(repo, "add", "vllm_ascend/patch_model.py")
    result = run_make("deliver", deliver_env(runs, repo, model))
    assert result.returncode == 0, result.stderr
    ahead = commits_ahead(repo)
    assert len(ahead) == 1
    assert ahead[0] in result.stdout  # the hash is printed
    body = git(repo, "log", "-1", "--format=%B").stdout
    assert "Signed-off-by: Test Engineer <test@example.com>" in body
    assert f"Bringup-Model: {model}" in body
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").stdout.split())
    nav = "mkdocs.yml" if kind == "mkdocs" else "docs/source/tutorials/models/index.md"
    expected = {f"tests/e2e/models/configs/{model}.yaml", f"docs/source/tutorials/models/{model}.md",
                nav, "vllm_ascend/patch_model.py", "tests/e2e/models/configs/accuracy.txt"}
    nightly = (repo / "tests/e2e/models/configs/accuracy.txt").read_text().splitlines()
    assert nightly == ["Qwen3-8B.yaml", f"{model}.yaml"]  # listed once, after the existing entries
    assert files == expected
    for path in expected:
        assert path in result.stdout  # the file list is printed
    assert git(repo, "status", "--porcelain").stdout == ""
    delivered = (repo / f"docs/source/tutorials/models/{model}.md").read_text()
    assert delivered == (runs / model / f"deliverables/docs/source/tutorials/models/{model}.md").read_text()


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
    git(repo, "add", "vllm_ascend/more.py")
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
    git(repo, "add", "vllm_ascend/fix.py")
    result = run_make("deliver", deliver_env(runs, repo))
    # Same files already delivered upstream: the new commit holds the staged code change only.
    assert result.returncode == 0, result.stderr
    assert git(repo, "rev-list", "--count", "main..HEAD").stdout.strip() == "1"


@pytest.mark.parametrize("case, needle", [
    ("untracked", "unstaged or untracked changes outside the delivery: ?? notes.txt"),
    ("unstaged", "unstaged or untracked changes outside the delivery: M vllm_ascend/__init__.py"),
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
    one_line_refusal(result, "tiny-dummy-only")
    assert commits_ahead(repo) == []
    assert "tiny-dummy-only" not in (repo / "mkdocs.yml").read_text()
