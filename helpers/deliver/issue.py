"""The issue comment of `make deliver`: posted to the GitHub issue (ISSUE_URL) with `gh issue
comment` when gh is here and logged in, else the file and the command to post it are printed.
Never fails the delivery: the commit is made already; a comment that could not be posted says why."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

GH_TIMEOUT = 60.0


def _gh(gh: str, *args: str, env: dict[str, str] | None) -> subprocess.CompletedProcess:
    return subprocess.run([gh, *args], capture_output=True, text=True, timeout=GH_TIMEOUT, env=env)


def post(issue_url: str, comment: Path, env: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """({posted, url, why, command}, lines to print). `env` is the environment gh runs in (PATH)."""
    command = f"gh issue comment {shlex.quote(issue_url or '<ISSUE_URL>')} --body-file {shlex.quote(str(comment))}"
    result: dict[str, Any] = {"posted": False, "issue": issue_url or None, "file": str(comment), "command": command}
    gh = shutil.which("gh", path=(env or {}).get("PATH")) if env is not None else shutil.which("gh")
    if not issue_url:
        result["why"] = "ISSUE_URL is not set"
    elif gh is None:
        result["why"] = "gh is not installed here"
    else:
        try:
            logged_in = _gh(gh, "auth", "status", env=env).returncode == 0
            done = _gh(gh, "issue", "comment", issue_url, "--body-file", str(comment), env=env) if logged_in else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            logged_in, done = True, None
            result["why"] = f"gh failed: {exc}"
        if not logged_in:
            result["why"] = "gh is not logged in (gh auth login)"
        elif done is not None and done.returncode == 0:
            result.update({"posted": True, "url": (done.stdout.strip().splitlines() or [issue_url])[-1]})
        elif done is not None:
            result["why"] = f"gh issue comment failed: {(done.stderr or done.stdout).strip()[:200]}"
    if result["posted"]:
        return result, [f"  issue comment posted: {result['url']}"]
    return result, [f"  issue comment: {comment} (not posted: {result['why']})", f"  post it with: {command}"]
