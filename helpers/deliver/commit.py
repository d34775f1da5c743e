"""`make deliver`: exactly one signed commit (`git commit -s`) in DELIVERY_REPO holding what was
validated: the model's vllm-ascend code (code.py, from changes.json), the e2e
YAML, the tutorial and its nav/toctree entry (docs.py), and the YAML's line in
the nightly accuracy.txt when the repo has one. The message follows upstream's style (a title
prefix chosen from what the commit holds, the PR template's three sections with the evidence
summary); no custom trailer. The commit made is recorded in deliverables/deliver.json, and the
report and issue comment are rendered again with its hash.

Refusals, all before the delivery repo is touched (one line each):
- exit 2: DELIVERY_REPO unset, not a directory, not a git work tree; git user.name / user.email
  missing; the docs system cannot be told; changes in the repo that are not part of this
  delivery (staged, unstaged or untracked, outside the delivery files and the listed code); the
  code cannot be placed (code.py); a second delivery commit: this branch (since its base,
  see gitrepo.base_commit) already holds a commit touching the model's tutorial or e2e YAML;
- exit 1: no full-layer Stage B PASS (the evidence does not sign off);
- exit 2: no passing accuracy run (no e2e YAML to deliver).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import changeset, gitrepo
from helpers import evidence as ev
from helpers.deliver import issue
from helpers.deliver.code import CodePlan, export_vllm_patch, plan_code, put_in
from helpers.deliver.docs import NIGHTLY_LIST, DocsSystem, add_nav_entry, add_nightly_entry, detect_docs_system
from helpers.e2e import DELIVER_RECORD, E2E_DIR, TUTORIAL_DIR, VLLM_PATCH
from helpers.errors import EnvironmentProblem, SignOffRefused, UsageError
from helpers.model import Model
from helpers.settings import Settings
from helpers.templating import render


def require_repo(settings: Settings) -> Path:
    repo = settings.delivery_repo
    if repo is None:
        raise UsageError("DELIVERY_REPO is not set", "pass DELIVERY_REPO=<path of the vllm-ascend checkout>")
    if not repo.is_dir():
        raise UsageError(f"DELIVERY_REPO={str(repo)!r} is not a directory", "point it at a vllm-ascend checkout")
    top = gitrepo.toplevel(repo)
    if top is None:
        raise UsageError(f"DELIVERY_REPO={str(repo)!r} is not a git repository", "clone vllm-ascend there first")
    return top


def require_identity(repo: Path) -> tuple[str, str]:
    # The Signed-off-by line uses the committer identity: config, or git's own env variables.
    name = gitrepo.git(repo, "config", "user.name", check=False).strip() or os.environ.get("GIT_COMMITTER_NAME", "")
    email = gitrepo.git(repo, "config", "user.email", check=False).strip() or os.environ.get("GIT_COMMITTER_EMAIL", "")
    if not name or not email:
        missing = " and ".join(k for k, v in (("user.name", name), ("user.email", email)) if not v)
        raise UsageError(f"git {missing} not set in {repo}: the Signed-off-by line needs them",
                         f"git -C {repo} config user.name 'Your Name' && "
                         f"git -C {repo} config user.email you@example.com")
    return name, email


@dataclass
class Delivery:
    """Where the deliverables of `model` go and what code comes along, checked before anything
    is written."""

    repo: Path
    docs: DocsSystem
    model: Model
    code: CodePlan

    @property
    def yaml_rel(self) -> str:
        return f"{E2E_DIR}/{self.model.name}.yaml"

    @property
    def doc_rel(self) -> str:
        return f"{TUTORIAL_DIR}/{self.model.name}.md"

    @property
    def nav_rel(self) -> str:
        return str(self.docs.nav_file.relative_to(self.repo))

    def ours(self) -> set[str]:
        return {self.yaml_rel, self.doc_rel, self.nav_rel, NIGHTLY_LIST} | self.code.allowed_dirty()


def prepare(settings: Settings, model: Model) -> Delivery:
    """Every refusal that needs no rendering: the repo, the signer, the docs system, the code
    plan, changes that are not part of the delivery, an earlier delivery commit."""
    repo = require_repo(settings)
    require_identity(repo)
    docs = detect_docs_system(repo)
    base = gitrepo.base_commit(repo)
    code = plan_code(model.runs_dir, repo, base, {changeset.VLLM: settings.vllm_src,
                                                   changeset.ASCEND: settings.vllm_ascend_src})
    delivery = Delivery(repo, docs, model, code)
    stray = [f"{state.strip()} {path}" for state, path in gitrepo.status(repo) if path not in delivery.ours()]
    if stray:
        shown = ", ".join(stray[:5]) + (f" (+{len(stray) - 5} more)" if len(stray) > 5 else "")
        hint = ("stash or remove them; code that belongs in the commit must be listed by `make changes`"
                if code.changes_present else
                f"run `make changes MODEL={model.requested or model.name}` so the delivery knows the model's code, "
                "or stash them")
        raise UsageError(f"DELIVERY_REPO has staged or dirty changes that are not part of this delivery: {shown}", hint)
    earlier = gitrepo.commits_touching(repo, base, [delivery.yaml_rel, delivery.doc_rel])
    if earlier:
        raise UsageError(f"the branch already has a bring-up commit for {model.name} ({earlier[0][:12]}); "
                         "a second commit would break the one-commit rule",
                         "amend it (git commit --amend -s) or deliver from a fresh branch")
    return delivery


def message(delivery: Delivery, staged: list[str], code_paths: list[str], patch: Path | None,
            evidence: dict[str, Any]) -> tuple[str, str]:
    """(title, full message) in upstream's style: [Model] when the commit carries model code,
    else [Doc][Model]; each staged file with its role; the evidence summary."""
    model = delivery.model.name
    has_code = any(path in staged for path in code_paths)
    title = f"[Model] Support {model}" if has_code else f"[Doc][Model] Add {model} tutorial and accuracy config"
    roles = {delivery.yaml_rel: "e2e accuracy config (values measured with lm-eval)",
             delivery.doc_rel: f"tutorial ({delivery.docs.kind} docs)",
             delivery.nav_rel: "navigation entry of the tutorial",
             NIGHTLY_LIST: "the config in the nightly accuracy list"}
    files = [{"path": p, "role": roles.get(p) or delivery.code.kinds.get(p, "model code" if p in code_paths else "")}
             for p in staged]
    text = render("commit_message.txt.j2", title=title, has_code=has_code, staged=files, vllm=delivery.code.vllm,
                  vllm_patch=patch.name if patch else None, left_out=delivery.code.left_out, e=evidence)
    return title, text


def commit(delivery: Delivery, files: dict[str, Path], signed_off: bool, missing: str,
           evidence: dict[str, Any]) -> list[str]:
    """Refuse without sign-off; else export the vLLM patch, place the code, copy the rendered
    YAML and tutorial in, add the nav and nightly entries, make the one signed commit and record
    it. `files`, `signed_off`, `missing` and `evidence` are what the render produced."""
    repo, model = delivery.repo, delivery.model.name
    if not signed_off:
        raise SignOffRefused(missing or f"sign-off refused for {model}: no full-layer Stage B PASS")
    if "e2e config" not in files:
        raise UsageError(f"no e2e config for {model}: accuracy.json is missing or did not pass",
                         f"run `make accuracy MODEL={model}` first")
    patch = export_vllm_patch(delivery.code, delivery.model.runs_dir / VLLM_PATCH)
    code_paths = put_in(delivery.code, repo)
    for source, relative in ((files["e2e config"], delivery.yaml_rel), (files["tutorial"], delivery.doc_rel)):
        target = repo / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    nav_text, changed = add_nav_entry(delivery.docs, model, model)
    if changed:
        ev.atomic_write_text(delivery.docs.nav_file, nav_text)
    written = [delivery.yaml_rel, delivery.doc_rel, delivery.nav_rel]
    if add_nightly_entry(repo, f"{model}.yaml"):
        written.append(NIGHTLY_LIST)
    gitrepo.git(repo, "add", "--", *written)
    staged = gitrepo.git(repo, "diff", "--cached", "--name-only").split()
    if not staged:
        raise UsageError(f"nothing to commit in {repo}: the delivery is already there", "nothing to do")
    title, text = message(delivery, staged, code_paths, patch, evidence)
    result = subprocess.run(["git", "-C", str(repo), "commit", "-s", "-q", "-F", "-"], input=text,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvironmentProblem(f"git commit failed: {(result.stderr or result.stdout).strip()[:300]}",
                                 "the changes stay staged; fix the cause (hooks, signing) and rerun `make deliver`")
    head = gitrepo.git(repo, "rev-parse", "HEAD").strip()
    record = {"model": model, "commit": head, "title": title, "repo": str(repo),
              "branch": gitrepo.git(repo, "rev-parse", "--abbrev-ref", "HEAD", check=False).strip() or None,
              "mode": delivery.code.mode, "files": staged, "vllm_patch": str(patch) if patch else None,
              "vllm_files": delivery.code.vllm, "left_out": delivery.code.left_out, "at": ev.utc_iso(),
              "moved_from_vllm": delivery.code.relocation.moved, "vllm_kept": delivery.code.relocation.kept}
    ev.atomic_write_json(delivery.model.runs_dir / DELIVER_RECORD, record)
    lines = [f"deliver: committed {head} in {repo} ({delivery.docs.kind} docs, code {delivery.code.mode}): {title}"]
    shown = gitrepo.git(repo, "show", "--name-status", "--format=", "HEAD").strip().splitlines()
    lines += [f"  {line}" for line in shown]
    lines += [f"  moved from the vLLM root: {source} -> {target}"
              for source, target in delivery.code.relocation.moved.items()]
    if patch:
        lines.append(f"  needs a vLLM change ({len(delivery.code.vllm)} files): {patch}")
        lines += [f"    {path}: {why}" for path, why in delivery.code.relocation.kept.items()]
    lines += [f"  left out (outside the minimal set): {item}" for item in delivery.code.left_out]
    return lines


def post_issue_comment(model: Model, issue_url: str, comment: Path) -> list[str]:
    """Post the issue comment (or say how); recorded in deliver.json beside the commit."""
    result, lines = issue.post(issue_url, comment)
    record_path = model.runs_dir / DELIVER_RECORD
    record = ev.read_json(record_path) if record_path.is_file() else {}
    ev.atomic_write_json(record_path, {**record, "issue_comment": result})
    return lines
