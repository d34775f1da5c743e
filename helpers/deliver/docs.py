"""Where the tutorial goes in the delivery repo and how it is listed: the docs system (MkDocs when
mkdocs.yml is at the root, MyST when docs/source/conf.py and a models index.md toctree exist;
anything else is refused, never guessed), the nav / toctree entry (one line inserted, every other
byte kept), and the e2e config's line in the nightly accuracy.txt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from helpers import evidence as ev
from helpers.e2e import E2E_DIR, TUTORIAL_DIR
from helpers.errors import UsageError

NIGHTLY_LIST = f"{E2E_DIR}/accuracy.txt"


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
