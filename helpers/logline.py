"""The anatomy of one vLLM / vllm-ascend log line: nested process tags, `[rankN]:` prefixes, the
vLLM or uvicorn level header, and the message behind them (raw CANN and traceback lines have
no header at all)."""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Real logs nest process tags: `(vLLMHttpServer pid=1) (Worker_TP3 pid=2) ERROR ...`,
# `(EngineCore_DP0 pid=3) (Worker_TP0_EP0 pid=4) INFO ...`; the innermost tag names the process.
PROC_TAG = re.compile(r"\((?P<proc>[^()]+?) pid=\d+[^()]*\) ?")
# torch / torch_npu prefix their lines per rank: `[rank1]: RuntimeError: ...`, `[rank0]:[W1210 ...] ...`.
RANK_TAG = re.compile(r"\[rank(?P<rank>\d+)\]: ?")
# `INFO 08-14 10:11:12 [file.py:12] message`; one space before the message so traceback
# indentation survives.
VLLM_HEADER = re.compile(r"(?P<level>[A-Z]+) \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ?")
# uvicorn: `INFO:     Application startup complete.` (sometimes behind the vLLM proc prefix).
UVICORN = re.compile(r"(?P<level>[A-Z]+):\s+")
LEVELS = ("INFO", "WARNING", "ERROR", "DEBUG", "CRITICAL")


def split_prefix(text: str) -> tuple[str | None, str | None, str, bool]:
    """(process, level, message, has_process_tag) of one log line. The process is the innermost
    `(Name pid=N)` tag, else `rankN` from a `[rankN]:` prefix; the level comes from a vLLM or
    uvicorn header when there is one (raw CANN / traceback lines have none)."""
    proc = level = None
    pos = 0
    tagged = False
    while text.startswith("(", pos):
        m = PROC_TAG.match(text, pos)
        if not m:
            break
        proc, pos, tagged = m.group("proc"), m.end(), True
    if text.startswith("[rank", pos):
        m = RANK_TAG.match(text, pos)
        if m:
            proc = proc or f"rank{m.group('rank')}"
            pos = m.end()
    if text[pos:pos + 1].isupper():
        m = VLLM_HEADER.match(text, pos)
        if m:
            return proc, m.group("level"), text[m.end():], tagged
        m = UVICORN.match(text, pos) if ":" in text[pos:pos + 12] else None
        if m and m.group("level") in LEVELS:
            return proc, m.group("level"), text[m.end():], tagged
    return proc, level, text[pos:], tagged
