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
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from helpers import evidence as ev
from helpers.e2e import E2E_DIR, TUTORIAL_DIR
from helpers.errors import EnvironmentProblem, UsageError
from helpers.model import Model
from helpers.settings import Settings
from helpers.templating import render

TRAILER = "Bringup-Model"
NIGHTLY_LIST = f"{E2E_DIR}/accuracy.txt"


# --- the docs system of the delivery repo -----------------------------------------------------

@dataclass
class DocsSystem:
    kind: str  # mkdocs | myst
    repo: Path
    nav_file: Path  # mkdocs.yml or docs/source/tutorials/models/index.md


def detect_docs_system(repo: Path) -> DocsSystem:
    """MkDocs when mkdocs.yml is at the root; MyST when docs/source/conf.py and the models
    index.md with a toctree exist. Anything else is refused: never guess."""
    repo = Path(repo)
    if (repo / "mkdocs.yml").is_file():
        return DocsSystem("mkdocs", repo, repo / "mkdocs.yml")
    index = repo / TUTORIAL_DIR / "index.md"
    if (repo / "docs/source/conf.py").is_file() and index.is_file() and \
            re.search(r"^:{3,}\s*\{toctree\}", index.read_text(encoding="utf-8"), re.M):
        return DocsSystem("myst", repo, index)
    raise UsageError(f"DELIVERY_REPO={repo} has neither mkdocs.yml at its root nor docs/source/conf.py with a "
                     f"{TUTORIAL_DIR}/index.md toctree; cannot tell its docs system",
                     "point DELIVERY_REPO at a vllm-ascend checkout")


def _mkdocs_docs_dir(text: str) -> str:
    match = re.search(r"^docs_dir:\s*(.+?)\s*$", text, re.M)
    if not match:
        return "docs"
    value = match.group(1)
    env_default = re.fullmatch(r"!ENV\s*\[\s*\w+\s*,\s*['\"]?([^'\"\]]+?)['\"]?\s*\]", value)
    return (env_default.group(1) if env_default else value.strip("'\"")).rstrip("/")


def add_nav_entry(docs: DocsSystem, model: str, title: str) -> tuple[str, bool]:
    """(new text of the nav file, changed?). Inserts one line, keeps every other byte: comments,
    !ENV tags and ordering survive (no YAML round trip). Idempotent."""
    text = docs.nav_file.read_text(encoding="utf-8")
    if docs.kind == "myst":
        if re.search(rf"^\s*{re.escape(model)}(\.md)?\s*$", text, re.M):
            return text, False
        lines = text.splitlines(keepends=True)
        start = next((i for i, line in enumerate(lines) if re.match(r"^(:{3,})\s*\{toctree\}", line)), None)
        fence = re.match(r"^(:{3,})", lines[start]).group(1) if start is not None else None
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == fence), None) if fence else None
        if end is None:
            raise UsageError(f"{docs.nav_file}: no closed {{toctree}} block to add {model} to",
                             "fix the toctree in the models index.md")
        lines.insert(end, f"{model}\n")
        return "".join(lines), True
    docs_dir = _mkdocs_docs_dir(text)
    target = f"{TUTORIAL_DIR}/{model}.md"
    if not (target + "/").startswith(docs_dir + "/"):
        raise UsageError(f"{docs.nav_file}: docs_dir {docs_dir!r} does not hold {target}",
                         "place the tutorial by hand; the toolkit only edits the standard layout")
    entry_path = target[len(docs_dir) + 1:]
    if re.search(rf"(^|[\s:]){re.escape(entry_path)}\s*$", text, re.M):
        return text, False
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if re.match(r"^\s*-\s*['\"]?Model Tutorials['\"]?\s*:\s*$", line)), None)
    if header is None:
        raise UsageError(f"{docs.nav_file}: no 'Model Tutorials' section in nav",
                         "add the nav section, or the entry by hand")
    header_indent = len(lines[header]) - len(lines[header].lstrip())
    last_child = None
    child_indent = None
    child_style = None
    for i in range(header + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        if child_indent is None:
            child_indent = indent
        if indent == child_indent and line.lstrip().startswith("- "):
            last_child = i
            child_style = line
    if last_child is None:
        raise UsageError(f"{docs.nav_file}: the 'Model Tutorials' nav section has no entries to follow",
                         "add the entry by hand")
    labelled = re.match(r"^\s*-\s*[^:]+:\s*\S+\.md\s*$", child_style or "")
    item = f"{title}: {entry_path}" if labelled else entry_path
    newline = "\n" if lines[last_child].endswith("\n") else ""
    if not newline:
        lines[last_child] += "\n"
    lines.insert(last_child + 1, " " * child_indent + f"- {item}\n")
    return "".join(lines), True



# --- the commit ------------------------------------------------------------------------------

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


def staged_changes(repo: Path) -> list[str]:
    out = git(repo, "diff", "--cached", "--name-status", check=False)
    return [line for line in out.splitlines() if line.strip()]


def require_repo(settings: Settings) -> Path:
    repo = settings.delivery_repo
    if repo is None:
        raise UsageError("DELIVERY_REPO is not set", "pass DELIVERY_REPO=<path of the vllm-ascend checkout>")
    if not repo.is_dir():
        raise UsageError(f"DELIVERY_REPO={str(repo)!r} is not a directory", "point it at a vllm-ascend checkout")
    top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise UsageError(f"DELIVERY_REPO={str(repo)!r} is not a git repository", "clone vllm-ascend there first")
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


@dataclass
class Delivery:
    """Where the deliverables of `model` go, checked before anything is written."""

    repo: Path
    docs: DocsSystem
    model: Model

    @property
    def yaml_rel(self) -> str:
        return f"{E2E_DIR}/{self.model.name}.yaml"

    @property
    def doc_rel(self) -> str:
        return f"{TUTORIAL_DIR}/{self.model.name}.md"

    @property
    def nav_rel(self) -> str:
        return str(self.docs.nav_file.relative_to(self.repo))


def prepare(settings: Settings, model: Model) -> Delivery:
    """Every refusal that needs no rendering: the repo, the signer, the docs system, stray
    changes, an earlier delivery commit."""
    repo = require_repo(settings)
    require_identity(repo)
    delivery = Delivery(repo, detect_docs_system(repo), model)
    ours = {delivery.yaml_rel, delivery.doc_rel, delivery.nav_rel, NIGHTLY_LIST}
    dirty = unexpected_changes(repo, ours)
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        raise UsageError(f"DELIVERY_REPO has unstaged or untracked changes outside the delivery: {shown}",
                         "stage the code changes that belong in the commit (git add), stash or remove the rest")
    earlier = prior_delivery(repo, model.name)
    if earlier:
        raise UsageError(f"the branch already has a bring-up commit for {model.name} ({earlier[:12]}); "
                         "a second commit would break the one-commit rule",
                         "amend it (git commit --amend -s) or deliver from a fresh branch")
    return delivery


def commit(delivery: Delivery, files: dict[str, Path], signed_off: bool) -> list[str]:
    """Copy the rendered YAML and tutorial in, add the nav and nightly entries, make the one
    signed commit. `files` and `signed_off` are what `make report` rendered for this repo."""
    repo, model = delivery.repo, delivery.model.name
    if "e2e config" not in files:
        raise UsageError(f"no e2e config for {model}: accuracy.json is missing or did not pass",
                         "run `make accuracy` first")
    if not signed_off:
        raise UsageError(f"no passing Stage B evidence for {model}: dummy evidence never signs off a delivery",
                         f"run `make stage-b MODEL={model}` until it passes")
    for source, relative in ((files["e2e config"], delivery.yaml_rel), (files["tutorial"], delivery.doc_rel)):
        target = repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    text, changed = add_nav_entry(delivery.docs, model, model)
    if changed:
        ev.atomic_write_text(delivery.docs.nav_file, text)
    written = [delivery.yaml_rel, delivery.doc_rel, delivery.nav_rel]
    if add_nightly_entry(repo, f"{model}.yaml"):
        written.append(NIGHTLY_LIST)
    git(repo, "add", "--", *written)
    if not git(repo, "diff", "--cached", "--name-only").strip():
        raise UsageError(f"nothing to commit in {repo}: the delivery is already there", "nothing to do")
    message = render("commit_message.txt.j2", model=model, trailer=TRAILER, docs=delivery.docs.kind,
                     yaml_path=delivery.yaml_rel, doc_path=delivery.doc_rel, nav_path=delivery.nav_rel,
                     staged=git(repo, "diff", "--cached", "--name-only").split())
    result = subprocess.run(["git", "-C", str(repo), "commit", "-s", "-q", "-F", "-"], input=message,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvironmentProblem(f"git commit failed: {(result.stderr or result.stdout).strip()[:300]}",
                                 "the changes stay staged; fix the cause (hooks, signing) and rerun `make deliver`")
    head = git(repo, "rev-parse", "HEAD").strip()
    changed_files = git(repo, "show", "--name-status", "--format=", "HEAD").strip().splitlines()
    return [f"deliver: committed {head} in {repo} ({delivery.docs.kind} docs)"] + [f"  {line}" for line in changed_files]
