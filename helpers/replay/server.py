"""The replay server process: plays the startup, serves the OpenAI API once ready, reacts to
requests and signals the way the recorded vllm-ascend server did.

Like vLLM, the port is bound at process start (vLLM binds before the engine starts, so a clash
fails at once) but only listens once the scenario says the server is ready.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from helpers.replay.invocation import Invocation
from helpers.replay.player import Pace, Player
from helpers.replay.scenario import Rule, Scenario

DEFAULT_REPLY = "Hello! How can I help you today?"
ENGINE_DEAD = {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
               "type": "InternalServerError", "param": None, "code": 500}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class State:
    ready: bool = False
    engine_dead: bool = False
    stop: bool = False
    started: float = field(default_factory=time.monotonic)
    generation_requests: int = 0
    first_done: bool = False
    running: int = 0
    waiting: int = 0
    tokens_in_flight: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"length": 0, "stop": 0})
    prompt_tokens: int = 0
    generation_tokens: int = 0
    served_since_periodic: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def count_tokens(prompt: Any) -> int:
    """Prompt length: token ids count as given; text is estimated by words (no tokenizer here)."""
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], list):
            return sum(len(p) for p in prompt)
        if prompt and isinstance(prompt[0], str):
            return sum(max(1, len(p.split())) for p in prompt)
        return len(prompt)
    return max(1, len(str(prompt or "").split()))


def image_urls(body: dict[str, Any]) -> list[str]:
    urls: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    urls.append(str((part.get("image_url") or {}).get("url", "")))
    return urls


def image_problem(urls: list[str], text_only: bool) -> str:
    """Why vLLM's media loader would reject the image parts ('' when they are PNG data URLs)."""
    if text_only:
        return "At most 0 image(s) may be provided in one prompt."
    for url in urls:
        prefix = "data:image/png;base64,"
        if not url.startswith(prefix):
            return f"unsupported image URL {url[:40]!r}"
        try:
            data = base64.b64decode(url[len(prefix):], validate=True)
        except ValueError:
            return "image data is not base64"
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or b"IEND" not in data:
            return "image data is not a PNG"
    return ""


class ReplayServer:
    def __init__(self, scenario: Scenario, inv: Invocation, env: dict[str, str]) -> None:
        self.scenario, self.inv, self.env = scenario, inv, env
        self.state = State()
        self.pace = Pace.from_scenario(scenario, env)
        self.player = Player(scenario, inv, self.pace, on_ready=self.open_port)
        self.first_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max(1, inv.max_num_seqs))
        serving = scenario.serving
        self.reply_words = str(serving.get("reply") or DEFAULT_REPLY).split()
        self.ttft = float(serving.get("ttft_ms", 20)) / 1000.0
        self.tpot = float(serving.get("tpot_ms", 5)) / 1000.0
        self.http: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.inv.host else socket.AF_INET
        server_cls = type("ReplayHTTPServer", (ThreadingHTTPServer,),
                          {"address_family": family, "daemon_threads": True, "allow_reuse_address": True})
        self.http = server_cls((self.inv.host, self.inv.port), make_handler(self), bind_and_activate=False)
        if hasattr(socket, "SO_REUSEPORT"):  # vLLM's create_server_socket sets it too
            self.http.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.http.server_bind()
        except OSError as exc:
            self.player.emit(f"(APIServer pid={os.getpid()}) OSError: [Errno {exc.errno}] {exc.strerror}")
            self.player.exit(1)

    def open_port(self) -> None:
        assert self.http is not None
        self.http.server_activate()
        self.state.ready = True
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        if self.scenario.periodic:
            threading.Thread(target=self.periodic_loop, daemon=True).start()

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.state.ready:
            self.state.stop = True
            return
        policy = self.scenario.sigterm
        honour_after = policy.get("honour_after")
        elapsed = time.monotonic() - self.state.started
        if policy.get("during_startup", "ignore") == "honour" or (
                honour_after is not None and elapsed >= self.pace.seconds(float(honour_after))):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        # else: ignored, as vLLM does while its engine is still starting

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.bind()
        self.player.play(self.scenario.startup)
        if not self.state.ready:
            print(f"replay: scenario {self.scenario.name} ended its startup without `ready`, `exit` or `hang`",
                  file=sys.stderr)
            return 2
        while not self.state.stop:
            time.sleep(0.05)
        self.player.play(self.scenario.shutdown)
        self.player.exit(0)
        return 0

    def periodic_loop(self) -> None:
        entries = [p for p in self.scenario.periodic if self.player.holds(p.when)]
        if not entries:
            return
        turns = {id(p): 0 for p in entries}
        next_at = {id(p): time.monotonic() + max(self.pace.seconds(p.every), 0.05) for p in entries}
        while True:
            time.sleep(0.05)
            for entry in entries:
                if time.monotonic() < next_at[id(entry)]:
                    continue
                next_at[id(entry)] = time.monotonic() + max(self.pace.seconds(entry.every), 0.05)
                with self.state.lock:
                    served, self.state.served_since_periodic = self.state.served_since_periodic, 0
                if served and entry.lines and not self.state.engine_dead:
                    item = entry.lines[turns[id(entry)] % len(entry.lines)]
                    turns[id(entry)] += 1
                    self.player.emit(self.player.render(item))

    # ------------------------------------------------------------------ requests
    def kind_of(self, path: str, body: dict[str, Any]) -> str:
        if path == "/v1/completions":
            return "completion_stream" if body.get("stream") else "completion"
        if image_urls(body):
            return "image"
        return "chat_stream" if body.get("stream") else "chat"

    def rule_for(self, kind: str, nth: int) -> Rule | None:
        for rule in self.scenario.requests:
            if rule.kinds and kind not in rule.kinds:
                continue
            if rule.nth is not None and rule.nth != nth:
                continue
            if self.player.holds(rule.when):
                return rule
        return None

    def first_request(self) -> None:
        with self.first_lock:
            if not self.state.first_done:
                self.state.first_done = True
                self.player.play(self.scenario.first_request)

    def after(self, rule: Rule) -> None:
        if rule.engine_dead:
            self.state.engine_dead = True
        self.player.play_items(rule.after_items)
        if rule.exit_code is not None:
            Player.sleep(rule.exit_after)
            self.player.exit(int(rule.exit_code))

    def output_tokens(self, body: dict[str, Any], kind: str) -> tuple[int, str]:
        """(tokens to generate, finish_reason): max_tokens is honoured exactly when the client
        asks for a fixed length (ignore_eos / min_tokens, as load generators do); otherwise the
        scenario's reply ends early with `stop`, like a model reaching EOS."""
        default = 16 if kind.startswith("completion") else len(self.reply_words)
        limit = max(1, int(body.get("max_tokens") or body.get("max_completion_tokens") or default))
        if body.get("ignore_eos") or body.get("min_tokens") or limit <= len(self.reply_words):
            return limit, "length"
        return len(self.reply_words), "stop"

    def pieces(self, count: int) -> list[str]:
        words = self.reply_words
        return [(" " if i else "") + words[i % len(words)] for i in range(count)]


def make_handler(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
    from helpers.replay.handler import Handler  # noqa: PLC0415 - keeps this module's size small

    return type("BoundHandler", (Handler,), {"replay": server})
