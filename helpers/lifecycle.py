"""One server lifecycle for every step that serves: start, wait until ready, stop.

`serving()` is the only way a step runs a server (stage runs, feature gates, ladder rungs,
capacity cells, accuracy). Whatever happens inside the `with` block - a verdict, an exception,
Ctrl-C - the server's whole process group is stopped on the way out: gracefully when it was
ready and the block ended normally, promptly (short SIGTERM grace, then SIGKILL) when it never
became ready or the user interrupted.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from helpers.errors import Interrupted
from helpers.logscan import LogScanner
from helpers.plan import ServePlan
from helpers.readiness import LogTail, Progress, WatchOutcome, base_url, wait_ready
from helpers.serve import Server, ServerRecord


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP raise Interrupted once; repeats during cleanup are ignored so the
    server is always stopped."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            raise Interrupted(signum)

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@dataclass
class Session:
    """A started server and what watches it."""

    server: Server
    tail: LogTail
    url: str
    served_name: str
    outcome: WatchOutcome | None = None
    stop_how: str | None = None

    @property
    def scanner(self) -> LogScanner:
        return self.tail.scanner

    @property
    def ready(self) -> bool:
        return self.outcome is not None and self.outcome.state == "ready"

    def pump(self) -> None:
        self.tail.pump()

    def wait_ready(self, *, timeout: float, stall_timeout: float, api_key: str = "",
                   progress: Progress | None = None) -> WatchOutcome:
        self.outcome = wait_ready(self.server, self.tail, self.url, self.served_name, timeout=timeout,
                                  stall_timeout=stall_timeout, api_key=api_key, progress=progress)
        if progress:
            progress.done()
        return self.outcome


@contextmanager
def serving(plan: ServePlan, log_path: Path, *, runs_dir: Path, token: str,
            scanner: LogScanner | None = None, keep: bool = False) -> Iterator[Session]:
    """keep: a server that became ready and whose block ended normally is left running (`make
    serve`); its state file stays, so `make hygiene` (or a step that shares it) finds it."""
    server = Server.start(plan, log_path, runs_dir, token)
    session = Session(server, LogTail(log_path, scanner or LogScanner()), base_url(plan.host, plan.port),
                      plan.served_name)
    graceful = False
    try:
        yield session
        graceful = session.ready
    finally:
        if keep and graceful and server.alive():
            session.stop_how = f"left running (pid {server.pid}, port {plan.port}); `make hygiene` stops it"
        else:
            session.scanner.mark_stop()
            session.stop_how = server.stop(graceful=graceful)
        session.pump()


class SharedServer:
    """A live server of ours that an earlier step started (`make serve`): watched like our own
    start, never stopped here."""

    def __init__(self, record: ServerRecord) -> None:
        self.record = record
        self.pid = record.pid

    def poll(self) -> int | None:
        return None if self.record.is_alive_and_ours() else 0

    def alive(self) -> bool:
        return self.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        time.sleep(timeout)
        return self.poll()


@contextmanager
def sharing(record: ServerRecord, log_path: Path, served_name: str,
            scanner: LogScanner | None = None) -> Iterator[Session]:
    """The session of a step served by a live server of ours: its serve.log is read from the start
    (the startup facts: KV cache, ready line), requests go to its port; it is left running."""
    server = SharedServer(record)
    session = Session(server, LogTail(log_path, scanner or LogScanner()),  # type: ignore[arg-type]
                      base_url(record.host, record.port), served_name)
    try:
        yield session
    finally:
        session.stop_how = f"left running: shared, started by {record.run_dir}"
        session.pump()
