"""Server lifecycle: start in a new process group, record it, stop only what we recorded.

State files (<RUNS_DIR>/.state/port-<port>.json) name the pid, the process group, the start
time of the leader (to detect pid reuse) and the token of the invocation that started it.
Nothing here ever looks a process up by name.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from helpers.errors import EnvironmentProblem
from helpers.evidence import atomic_write_json, utc_iso
from helpers.plan import ServePlan

STOP_GRACE_SECONDS = 20.0
# A server that never became ready (or whose user pressed Ctrl-C) gets this long after SIGTERM
# before SIGKILL: vLLM ignores SIGTERM while it starts, and nothing graceful is left to lose.
PROMPT_GRACE_SECONDS = 2.0


# ----------------------------------------------------------------------------- /proc helpers
def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def process_start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def process_group_of(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[2]) if fields else None


def process_state(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def process_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part) or "?"


def group_cpu_ticks(pgid: int) -> int:
    """User + system CPU ticks used so far by the live members of a process group."""
    total = 0
    for pid in group_members(pgid):
        fields = _proc_stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def port_sockets(port: int) -> list[tuple[str, str]]:
    """(TCP state, socket inode) of each socket whose local port is `port` (/proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                found.append((TCP_STATES.get(parts[3], parts[3]), parts[9]))
    return found


def listening_pids(port: int) -> list[int]:
    """Pids holding a listening TCP socket on `port` (read from /proc, no external tools)."""
    inodes = {inode for state, inode in port_sockets(port) if state == "LISTEN"}
    owners: set[int] = set()
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    if os.readlink(fd) in targets:
                        owners.add(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return sorted(owners)


# ----------------------------------------------------------------------------- records
@dataclass
class ServerRecord:
    pid: int
    pgid: int
    start_ticks: int | None
    port: int
    host: str
    run_dir: str
    token: str
    owner_pid: int
    command: str
    started_at: str = field(default_factory=utc_iso)

    def is_alive_and_ours(self) -> bool:
        """True while the recorded leader still runs (same pid AND same start time)."""
        state = process_state(self.pid)
        return state is not None and state != "Z" and process_start_ticks(self.pid) == self.start_ticks

    def verified_members(self) -> list[int]:
        """Group members we may signal: the leader if verified, or (leader gone) members of the
        recorded group that started after the leader did, so a reused pgid is never hit."""
        if self.is_alive_and_ours():
            return group_members(self.pgid)
        if self.start_ticks is None or process_state(self.pid) is not None:
            return []  # the pid now belongs to another process: nothing here is ours
        # Leader gone, members left (e.g. an EngineCore orphaned by a SIGKILL): the kernel does
        # not hand out a pid still used as a group id, so these are ours.
        return [m for m in group_members(self.pgid) if (process_start_ticks(m) or 0) >= self.start_ticks]


def state_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / ".state"


def state_file(runs_dir: str | Path, port: int) -> Path:
    return state_dir(runs_dir) / f"port-{port}.json"


def read_state(path: Path) -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def recorded_servers(runs_dir: str | Path) -> Iterator[tuple[Path, ServerRecord]]:
    directory = state_dir(runs_dir)
    if directory.is_dir():
        for path in sorted(directory.glob("port-*.json")):
            record = read_state(path)
            if record:
                yield path, record


# ----------------------------------------------------------------------------- port checks
def port_is_free(host: str, port: int) -> bool:
    """Bind without SO_REUSEPORT: vLLM sets it, so a second server could otherwise share the
    port silently and answer our requests."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def describe_port_holders(port: int) -> str:
    pids = listening_pids(port)
    if not pids:
        states = sorted({state for state, _inode in port_sockets(port)})
        if states:
            return (f"sockets in state {', '.join(states)} and no listener (a connection using it as its own "
                    "port, or a server still closing)")
        return "a process this user cannot see"
    return "; ".join(f"pid {pid}: {process_command(pid)[:200]}" for pid in pids)


def wait_port_free(host: str, port: int, seconds: float) -> bool:
    """A port a server of ours just let go of can take the kernel a moment to give back."""
    deadline = time.monotonic() + seconds
    while not port_is_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def require_free_port(host: str, port: int, runs_dir: str | Path) -> None:
    if port_is_free(host, port):
        return
    record = read_state(state_file(runs_dir, port))
    if record and record.is_alive_and_ours():
        raise EnvironmentProblem(
            f"port {port} is held by a server this tool started (pid {record.pid}, run {record.run_dir})",
            "stop it with `make hygiene PORT=%d` or choose another PORT" % port,
        )
    raise EnvironmentProblem(
        f"port {port} is in use by {describe_port_holders(port)}; not ours, left untouched",
        "choose another PORT",
    )


# ----------------------------------------------------------------------------- the server
class Server:
    """A vLLM server we started. `stop()` is idempotent and safe after the server died."""

    def __init__(self, process: subprocess.Popen, record: ServerRecord, state_path: Path) -> None:
        self.process = process
        self.record = record
        self.state_path = state_path
        self.stop_requested_at: float | None = None
        self._exit_fd = _pidfd(process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, plan: ServePlan, log_path: Path, runs_dir: str | Path, token: str,
              base_env: dict[str, str] | None = None) -> "Server":
        missing = plan.work_dir_problem()
        if missing:
            raise EnvironmentProblem(missing)
        log = open(log_path, "ab", buffering=0)
        try:
            process = subprocess.Popen(
                plan.argv,
                cwd=plan.cwd or None,
                env=plan.process_env(dict(base_env if base_env is not None else os.environ)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: pid == pgid, stop the group
            )
        except FileNotFoundError as exc:
            raise EnvironmentProblem(f"cannot start the server: {exc.filename} not found",
                                     "is vLLM installed for this BACKEND? run `make setup`") from None
        finally:
            log.close()
        record = ServerRecord(
            pid=process.pid, pgid=process.pid, start_ticks=process_start_ticks(process.pid),
            port=plan.port, host=plan.host, run_dir=str(log_path.parent), token=token,
            owner_pid=os.getpid(), command=plan.shell_line(),
        )
        path = state_file(runs_dir, plan.port)
        atomic_write_json(path, asdict(record))
        atomic_write_json(log_path.parent / "server.json", asdict(record))
        return cls(process, record, path)

    def poll(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """Sleep up to `timeout`, waking the moment the server exits (pidfd); its exit code or None."""
        if self._exit_fd is not None:
            try:
                select.select([self._exit_fd], [], [], timeout)
            except (OSError, ValueError):
                time.sleep(timeout)
        else:
            time.sleep(timeout)
        return self.process.poll()

    def stop(self, graceful: bool = True) -> str:
        """SIGTERM to the group, SIGKILL after the grace (short unless `graceful`): how it ended."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        how = stop_group(self.record, grace=STOP_GRACE_SECONDS if graceful else PROMPT_GRACE_SECONDS,
                         child=self.process)
        self.state_path.unlink(missing_ok=True)
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None
        return how


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux 5.3+), None where unsupported."""
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None


def stop_child_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a helper process we started in its own group (lm-eval, vllm bench, the registry
    probe): SIGTERM, then SIGKILL after `grace`; quiet when it already ended."""
    if process.poll() is not None:
        return
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if signum == signal.SIGTERM and grace <= 0:
            continue
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if process.stdout or process.stderr:  # reap it and close our ends of its pipes
        try:
            process.communicate(timeout=1)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass


def stop_group(record: ServerRecord, grace: float = STOP_GRACE_SECONDS,
               child: subprocess.Popen | None = None) -> str:
    members = record.verified_members()
    if child is not None and child.poll() is None:
        members = sorted(set(members) | {child.pid})
    if not members:
        if child is not None:
            child.poll()
        return "already exited"
    _signal_group(record.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if child is not None:
            child.poll()
        if not group_members(record.pgid):
            return "stopped (SIGTERM)"
        time.sleep(0.1)
    _signal_group(record.pgid, signal.SIGKILL)
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    end = time.monotonic() + 5
    while group_members(record.pgid) and time.monotonic() < end:
        time.sleep(0.1)
    return "killed (SIGKILL after %.0f s)" % grace


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # the group already exited on its own: not an error


# ----------------------------------------------------------------------------- hygiene
def stop_recorded(runs_dir: str | Path, *, token: str | None = None, port: int | None = None,
                  say=print) -> int:
    """Stop servers our state files record (all, or those of one token / port). Returns count."""
    stopped = 0
    for path, record in recorded_servers(runs_dir):
        if token is not None and record.token != token:
            continue
        if port is not None and record.port != port:
            continue
        if record.verified_members():
            how = stop_group(record)
            say(f"stopped our server pid {record.pid} on port {record.port} ({how}); run {record.run_dir}")
            stopped += 1
        else:
            say(f"state file {path.name}: pid {record.pid} is gone (or its pid was reused); removing the record")
        path.unlink(missing_ok=True)
    return stopped
