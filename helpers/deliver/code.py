"""The model's code in the one commit, from the changes `make changes` recorded (changes.json):

- DELIVERY_REPO is the vllm-ascend root: its changed files listed there are staged as they are;
- DELIVERY_REPO is another checkout: the root's minimal diff of those files (from the root's
  recorded base, new files included) is backported with `git apply --index`;
- changes in the vLLM root cannot go into a vllm-ascend repository: they are exported as a patch
  under deliverables/ and the report lists them as needing a vLLM change;
- files outside the minimal set stay out, by name.
Everything that can refuse is decided in `plan_code`, before the delivery repo is touched.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from helpers import changeset, gitrepo
from helpers.adapt import relocate
from helpers.adapt.relocate import Relocation
from helpers import evidence as ev
from helpers.errors import EnvironmentProblem, UsageError


@dataclass
class CodePlan:
    mode: str                       # in-place | backport | none
    changes_present: bool
    ascend: list[str] = field(default_factory=list)       # vllm-ascend paths that go into the commit
    ascend_patch: str = ""          # backport: the root's diff of them
    vllm: list[str] = field(default_factory=list)         # vLLM paths that need a vLLM change
    vllm_patch: str = ""
    left_out: list[str] = field(default_factory=list)     # "<root>: <path>" outside the minimal set
    kinds: dict[str, str] = field(default_factory=dict)   # path -> kind, as `make changes` classified it
    # a vLLM-root adapter moved into vllm-ascend's registration (helpers/adapt/relocate.py)
    relocation: Relocation = field(default_factory=Relocation)

    def allowed_dirty(self) -> set[str]:
        """Paths of the delivery repo that may be changed before the commit (in place only)."""
        return set(self.ascend) if self.mode == "in-place" else set()


def _root_tree(root: changeset.Root | None, name: str, fallback: Path | None) -> Path:
    path = (root.path if root and root.path else None) or fallback
    top = gitrepo.toplevel(path) if path and path.is_dir() else None
    if top is None:
        raise UsageError(f"the {name} root {path} recorded in changes.json is not a git work tree here",
                         "rerun `make changes` on this box (VLLM_SRC / VLLM_ASCEND_SRC)")
    return top


def plan_code(model_dir: Path, repo: Path, base: str | None, roots: dict[str, Path | None]) -> CodePlan:
    """What code goes where. `roots` are VLLM_SRC / VLLM_ASCEND_SRC, used when changes.json does
    not name a root's path; `base` is where the delivery branch started."""
    changes = changeset.read(model_dir)
    if not changes.present:
        return CodePlan("none", False)
    plan = CodePlan("none", True, [f.path for f in changes.of_root(changeset.ASCEND)],
                    vllm=[f.path for f in changes.of_root(changeset.VLLM)],
                    left_out=[f"{f.root}: {f.path}" for f in changes.outside()],
                    kinds={f.path: f.kind for f in changes.files if f.kind})
    if plan.vllm:
        root = changes.roots.get(changeset.VLLM)
        tree = _root_tree(root, "vLLM", roots.get(changeset.VLLM))
        vllm_base = root.diff_base if root else "HEAD"
        plan.relocation = relocate.plan(tree, vllm_base, plan.vllm, repo)
        plan.vllm = [path for path in plan.vllm if path in plan.relocation.kept]
        plan.vllm_patch = gitrepo.patch_of(tree, vllm_base, plan.vllm) if plan.vllm else ""
    if not plan.ascend:
        return plan
    root = changes.roots.get(changeset.ASCEND)
    tree = _root_tree(root, "vllm-ascend", roots.get(changeset.ASCEND))
    if tree == repo.resolve():
        plan.mode = "in-place"
        _check_in_place(plan, repo, base)
        return plan
    plan.mode = "backport"
    plan.ascend_patch = gitrepo.patch_of(tree, root.diff_base if root else "HEAD", plan.ascend)
    if not plan.ascend_patch.strip():
        raise UsageError(f"changes.json lists {len(plan.ascend)} vllm-ascend files but {tree} has no change to them",
                         "rerun `make changes`: the list is stale")
    result = subprocess.run(["git", "-C", str(repo), "apply", "--check", "--index", "-"], input=plan.ascend_patch,
                            capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["?"])[0]
        raise UsageError(f"the vllm-ascend changes of {tree} do not apply to DELIVERY_REPO: {first}",
                         "rebase the delivery branch on the root's base, or backport by hand (runbooks/08-delivery.md)")
    return plan


def _check_in_place(plan: CodePlan, repo: Path, base: str | None) -> None:
    """Each listed file must be changed in the work tree: one already committed on this branch
    would leave the delivery commit without it (or make it a second commit)."""
    dirty = {path for _code, path in gitrepo.status(repo)}
    for path in plan.ascend:
        if path in dirty:
            continue
        if base and gitrepo.git(repo, "diff", "--name-only", base, "HEAD", "--", path, check=False).strip():
            raise UsageError(f"{path} is already committed on this branch (since {base[:12]}): the delivery must be "
                             "one commit", f"squash first: git -C {repo} reset --soft {base[:12]}, then rerun")
        raise UsageError(f"changes.json lists {path} but DELIVERY_REPO has no change to it",
                         "rerun `make changes`: the list is stale")


def export_vllm_patch(plan: CodePlan, target: Path) -> Path | None:
    """The vLLM root's changes as one patch file (under deliverables/), or None without any."""
    if not plan.vllm:
        return None
    ev.atomic_write_text(target, plan.vllm_patch)
    return target


def put_in(plan: CodePlan, repo: Path) -> list[str]:
    """Stage the vllm-ascend changes (and the adapters moved from the vLLM root) in the delivery
    repo; returns the paths staged."""
    moved = relocate.write(plan.relocation, repo)
    if moved:
        gitrepo.git(repo, "add", "--", *moved)
    if plan.mode == "in-place":
        gitrepo.git(repo, "add", "-A", "--", *plan.ascend)
    elif plan.mode == "backport":
        result = subprocess.run(["git", "-C", str(repo), "apply", "--index", "-"], input=plan.ascend_patch,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise EnvironmentProblem(f"git apply failed in {repo}: {result.stderr.strip()[:200]}",
                                     "nothing was committed; check the repo and rerun `make deliver`")
    return list(plan.ascend) + moved
