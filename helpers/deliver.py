"""`make deliver`: the generated e2e YAML and tutorial (plus the nav/toctree entry, and the
YAML's line in the nightly accuracy.txt when the repo has one) go into DELIVERY_REPO as exactly
one signed commit (`git commit -s`) that also holds the code changes already staged there.

Refusals (exit 2, one line), all checked before any file is touched:
- DELIVERY_REPO unset, not a directory, or not a git work tree;
- git user.name / user.email missing (a Signed-off-by needs them);
- the docs system cannot be told (neither mkdocs.yml nor a MyST toctree): never guess;
- unstaged or untracked changes outside the files this step writes (they would be left out of,
  or silently mixed into, the one commit);
- a second commit: the branch already holds a commit with the trailer `Bringup-Model: <model>`
  since its base. The base is the upstream of the branch (@{u}) if set, else the merge-base
  with the remote default branch (origin/HEAD), else with a local main/master; on the default
  branch itself without an upstream, the whole history counts. To redo a delivery, amend that
  commit (`git commit --amend -s`) or start a fresh branch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers import evidence as ev
from helpers.errors import EnvironmentProblem, UsageError
from helpers.render import (E2E_DIR, TUTORIAL_DIR, add_nav_entry, detect_docs_system,
                            render_all, resolve_model_dir)
from helpers.settings import Settings

TRAILER = "Bringup-Model"
NIGHTLY_LIST = f"{E2E_DIR}/accuracy.txt"


def add_nightly_entry(repo: Path, yaml_name: str) -> bool:
    """List the e2e config in accuracy.txt (the nightly run's list) once; False when the list
    does not exist in this repo or already names it."""
    path = repo / NIGHTLY_LIST
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if yaml_name in (line.strip() for line in text.splitlines()):
        return False
    ev.atomic_write_text(path, text + ("" if not text or text.endswith("\n") else "\n") + yaml_name + "\n")
    return True


def git(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise EnvironmentProblem(f"git {' '.join(args[:2])} failed in {repo}: "
                                 f"{(result.stderr or result.stdout).strip().splitlines()[-1:] or ['?']}",
                                 "fix the repository state and retry")
    return result.stdout if result.returncode == 0 else ""


def _git_ok(repo: Path, *args: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True).returncode == 0


def require_repo(settings: Settings) -> Path:
    text = settings.get("DELIVERY_REPO", "").strip()
    if not text:
        raise UsageError("DELIVERY_REPO is not set", "pass DELIVERY_REPO=<path of the vllm-ascend checkout>")
    repo = Path(text).expanduser()
    if not repo.is_dir():
        raise UsageError(f"DELIVERY_REPO={text!r} is not a directory", "point it at a vllm-ascend checkout")
    top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise UsageError(f"DELIVERY_REPO={text!r} is not a git repository", "clone vllm-ascend there first")
    return Path(top.stdout.strip())


def require_identity(repo: Path) -> tuple[str, str]:
    # The Signed-off-by line uses the committer identity: config, or git's own env variables.
    name = git(repo, "config", "user.name", check=False).strip() or os.environ.get("GIT_COMMITTER_NAME", "")
    email = git(repo, "config", "user.email", check=False).strip() or os.environ.get("GIT_COMMITTER_EMAIL", "")
    if not name or not email:
        missing = " and ".join(k for k, v in (("user.name", name), ("user.email", email)) if not v)
        raise UsageError(f"git {missing} not set in {repo}: the Signed-off-by line needs them",
                         f"git -C {repo} config user.name 'Your Name' && git -C {repo} config user.email you@example.com")
    return name, email


def base_commit(repo: Path) -> str | None:
    """Where this branch started: its upstream, else the merge-base with the default branch."""
    if _git_ok(repo, "rev-parse", "--verify", "--quiet", "@{u}"):
        return git(repo, "merge-base", "HEAD", "@{u}").strip() or None
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD", check=False).strip()
    candidates = []
    head_ref = git(repo, "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD", check=False).strip()
    if head_ref:
        candidates.append(head_ref)
    candidates += [f"refs/heads/{name}" for name in ("main", "master") if name != branch]
    for ref in candidates:
        if _git_ok(repo, "rev-parse", "--verify", "--quiet", ref):
            return git(repo, "merge-base", "HEAD", ref, check=False).strip() or None
    return None


def prior_delivery(repo: Path, model: str) -> str | None:
    """The hash of a commit on this branch (since its base) carrying our trailer for `model`."""
    if not _git_ok(repo, "rev-parse", "--verify", "--quiet", "HEAD"):
        return None  # no commit yet
    base = base_commit(repo)
    span = f"{base}..HEAD" if base else "HEAD"
    out = git(repo, "log", "--format=%H%x00%B%x01", span, check=False)
    for entry in out.split("\x01"):
        commit, _, body = entry.strip().partition("\x00")
        for line in body.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == TRAILER and value.strip() == model:
                return commit
    return None


def unexpected_changes(repo: Path, ours: set[str]) -> list[str]:
    """Unstaged or untracked paths outside the files this step writes (staged changes are the
    code changes that belong in the commit)."""
    out = git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    problems = []
    entries = out.split("\0")
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":
            index += 1  # the rename source follows
        if path in ours:
            continue
        if status == "??" or status[1] != " ":
            problems.append(f"{status.strip()} {path}")
    return problems


def deliver(settings: Settings) -> list[str]:
    repo = require_repo(settings)
    require_identity(repo)
    docs = detect_docs_system(repo)
    model_dir = resolve_model_dir(settings)
    model = model_dir.name
    yaml_rel = f"{E2E_DIR}/{model}.yaml"
    doc_rel = f"{TUTORIAL_DIR}/{model}.md"
    nav_rel = str(docs.nav_file.relative_to(repo))
    ours = {yaml_rel, doc_rel, nav_rel, NIGHTLY_LIST}
    dirty = unexpected_changes(repo, ours)
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        raise UsageError(f"DELIVERY_REPO has unstaged or untracked changes outside the delivery: {shown}",
                         "stage the code changes that belong in the commit (git add), stash or remove the rest")
    earlier = prior_delivery(repo, model)
    if earlier:
        raise UsageError(f"the branch already has a bring-up commit for {model} ({earlier[:12]}); "
                         "a second commit would break the one-commit rule",
                         "amend it (git commit --amend -s) or deliver from a fresh branch")

    rendered = render_all(settings, docs=docs)
    if "e2e config" not in rendered.files:
        raise UsageError(f"no e2e config for {model}: accuracy.json is missing or did not pass",
                         "run `make accuracy` first")
    if not rendered.signed_off:
        raise UsageError(f"no passing Stage B evidence for {model}: dummy evidence never signs off a delivery",
                         f"run `make stage-b MODEL={model}` until it passes")

    for source, relative in ((rendered.files["e2e config"], yaml_rel), (rendered.files["tutorial"], doc_rel)):
        target = repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    text, changed = add_nav_entry(docs, model, model)
    if changed:
        ev.atomic_write_text(docs.nav_file, text)
    written = [yaml_rel, doc_rel, nav_rel]
    if add_nightly_entry(repo, f"{model}.yaml"):
        written.append(NIGHTLY_LIST)
    git(repo, "add", "--", *written)
    if not git(repo, "diff", "--cached", "--name-only").strip():
        raise UsageError(f"nothing to commit in {repo}: the delivery is already there", "nothing to do")

    from helpers.render import environment

    message = environment().get_template("commit_message.txt.j2").render(
        model=model, trailer=TRAILER, docs=docs.kind, yaml_path=yaml_rel, doc_path=doc_rel, nav_path=nav_rel,
        staged=git(repo, "diff", "--cached", "--name-only").split())
    result = subprocess.run(["git", "-C", str(repo), "commit", "-s", "-q", "-F", "-"], input=message,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvironmentProblem(f"git commit failed: {(result.stderr or result.stdout).strip()[:300]}",
                                 "the changes stay staged; fix the cause (hooks, signing) and rerun `make deliver`")
    commit = git(repo, "rev-parse", "HEAD").strip()
    files = git(repo, "show", "--name-status", "--format=", "HEAD").strip().splitlines()
    lines = [f"deliver: committed {commit} in {repo} ({docs.kind} docs)"]
    lines += [f"  {line}" for line in files]
    return lines
