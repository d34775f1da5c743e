"""Watch a starting server: readiness AND liveness AND the log, first event decides.

Ready means: the process is alive, GET /health answers 200 and GET /v1/models lists the served
name. A process exit, a fatal log line, a stall (no new log line for a while) or the timeout
decide a failure at once, not at the end of the wait.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

from helpers.logscan import LogScanner
from helpers.serve import Server, group_cpu_ticks

POLL_SECONDS = 0.2            # HTTP probe backstop
FAST_POLL_SECONDS = 0.02      # log reads and the exit wait between them
READY_LINE_FAST_PROBE_S = 2.0  # probe at every slice this long after the startup-complete line
SILENT_NOTE_S = 30.0          # progress says whether a silent server still uses CPU
HTTP_PROBE_TIMEOUT = 1.0


class LogTail:
    """Feeds the bytes appended to a log file into a scanner; constant memory."""

    def __init__(self, path: Path, scanner: LogScanner) -> None:
        self.path = Path(path)
        self.scanner = scanner
        self.offset = 0

    def pump(self) -> int:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                total = 0
                while True:
                    chunk = handle.read(1 << 20)
                    if not chunk:
                        break
                    self.scanner.feed(chunk)
                    self.offset += len(chunk)
                    total += len(chunk)
                return total
        except FileNotFoundError:
            return 0


class Progress:
    """One updating line on a TTY; on a pipe (CI) a line per phase change and a heartbeat."""

    def __init__(self, label: str, stream=None, heartbeat: float = 30.0) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.heartbeat = heartbeat
        self.last_phase: str | None = None
        self.last_print = 0.0

    def update(self, elapsed: float, phase: str, detail: str = "") -> None:
        text = f"[{self.label}] {elapsed:6.1f}s  {phase}{('  ' + detail) if detail else ''}"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
        elif phase != self.last_phase or now - self.last_print >= self.heartbeat:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_print = now
        self.last_phase = phase

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


@dataclass
class WatchOutcome:
    state: str  # ready | exited | fatal | stalled | timeout
    elapsed: float
    phase: str
    detail: str = ""
    returncode: int | None = None
    ready_line: int = 0
    silent_busy_s: float = 0.0  # time the log was silent while the server kept using CPU
    decided_at: float = field(default_factory=time.time)  # epoch, to measure detection latency

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def base_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{host}:{port}"


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def probe_ready(url: str, served_name: str, api_key: str = "") -> tuple[bool, str]:
    """(ready, why-not). /health first: a 503 there means the engine is dead."""
    try:
        health = requests.get(f"{url}/health", timeout=HTTP_PROBE_TIMEOUT)
    except requests.RequestException:
        return False, "not answering"
    if health.status_code != 200:
        return False, f"/health {health.status_code}"
    try:
        models = requests.get(f"{url}/v1/models", timeout=HTTP_PROBE_TIMEOUT, headers=auth_headers(api_key))
    except requests.RequestException:
        return False, "/v1/models not answering"
    if models.status_code != 200:
        return False, f"/v1/models {models.status_code}"
    try:
        names = [m.get("id") for m in models.json().get("data", [])]
    except ValueError:
        return False, "/v1/models returned no JSON"
    if served_name not in names:
        return False, f"/v1/models lists {names}, not {served_name!r}"
    return True, ""


def wait_ready(server: Server, tail: LogTail, url: str, served_name: str, *, timeout: float,
               stall_timeout: float, api_key: str = "", progress: Progress | None = None,
               clock: Callable[[], float] = time.monotonic) -> WatchOutcome:
    """Wait for ready / exit / fatal line / stall / timeout, whichever comes first.

    Events, not timers: the wait sleeps on the server's exit (pidfd) in short slices, reads the
    log between them, and probes HTTP at once when the log says startup completed (the 0.2 s
    probe stays as a backstop). A silent log is a stall only when the server's processes also
    used no CPU: compile and graph capture of a large model are long, silent and busy."""
    scanner = tail.scanner
    started = clock()
    last_activity = started
    cpu = CpuWatch(server.record.pgid)
    next_probe = started
    ready_seen: float | None = None
    silent_busy = 0.0
    why = ""
    while True:
        if tail.pump():
            last_activity = clock()
        now = clock()
        elapsed = now - started
        failures = scanner.failures()
        if failures:
            hit = failures[0]
            return WatchOutcome("fatal", elapsed, scanner.phase, f"line {hit.line_no}: {hit.text}",
                                server.poll(), silent_busy_s=round(silent_busy, 1))
        code = server.poll()
        if code is not None:
            tail.pump()
            return WatchOutcome("exited", elapsed, scanner.phase, f"server exited with code {code}", code,
                                silent_busy_s=round(silent_busy, 1))
        if scanner.ready_line is not None and ready_seen is None:
            ready_seen = now
        eager = ready_seen is not None and now - ready_seen < READY_LINE_FAST_PROBE_S
        if eager or now >= next_probe:
            next_probe = now + POLL_SECONDS
            ready, why = probe_ready(url, served_name, api_key)
            if ready:
                tail.pump()
                return WatchOutcome("ready", clock() - started, "ready", "", None, scanner.line_no,
                                    silent_busy_s=round(silent_busy, 1))
        silence = clock() - last_activity
        if silence >= stall_timeout:
            busy = cpu.advanced()
            if busy:
                silent_busy += silence
                last_activity = clock()
            else:
                return WatchOutcome("stalled", elapsed, scanner.phase,
                                    f"no new log line and no CPU time for {stall_timeout:.0f} s "
                                    f"(last phase: {scanner.phase})", silent_busy_s=round(silent_busy, 1))
        if elapsed >= timeout:
            return WatchOutcome("timeout", elapsed, scanner.phase,
                                f"not ready after {timeout:.0f} s (last phase: {scanner.phase}; {why})",
                                silent_busy_s=round(silent_busy, 1))
        if progress:
            detail = why if why != "not answering" else ""
            if silence >= SILENT_NOTE_S:
                detail = f"no log line for {silence:.0f} s; CPU {'busy' if cpu.advanced(peek=True) else 'idle'}"
            progress.update(elapsed, scanner.phase, detail)
        server.wait_exit(FAST_POLL_SECONDS)


class CpuWatch:
    """CPU time of a process group: does it still work while its log is silent?"""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.ticks = group_cpu_ticks(pgid)
        self._peeked: tuple[float, bool] = (0.0, False)

    def advanced(self, peek: bool = False) -> bool:
        """CPU used since the last (non-peek) call; a peek is cached for a second (reading /proc
        for a whole group is not free)."""
        if peek and time.monotonic() - self._peeked[0] < 1.0:
            return self._peeked[1]
        now = group_cpu_ticks(self.pgid)
        moved = now > self.ticks
        if peek:
            self._peeked = (time.monotonic(), moved)
        else:
            self.ticks = now
        return moved
