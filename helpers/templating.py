"""The one templating environment: every deliverable, report and generated runbook page is a
template under templates/ rendered here, so all filters and whitespace rules are the same.

Undefined values fail loudly (a template that reads a key the data lacks is a bug to see, not a
blank to ship); templates test optional keys with `is defined` or `.get()`.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from typing import Any

import jinja2

from helpers.settings import REPO_ROOT

TEMPLATES = REPO_ROOT / "templates"


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: Any, digits: int = 1) -> str:
    """A number for a table; missing values (cells that did not run) show as "-"."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _code(text: str) -> str:
    """Inline code that survives backticks and pipes inside the text."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _or_not_run(value: Any, text: str = "未运行 / not run") -> Any:
    return text if value in (None, "", [], {}) else value


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(shq=shlex.quote, or_not_run=_or_not_run, cell=_cell, num=_num, code=_code)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
