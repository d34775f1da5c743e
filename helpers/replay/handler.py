"""HTTP side of the replay server: /health, /v1/models, /version, /metrics, chat and completions
(plain and streaming, vLLM's response shapes), with the scenario's request rules applied."""

from __future__ import annotations

import json
import os
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, TYPE_CHECKING

from helpers.replay.player import _Defaults
from helpers.replay.server import ENGINE_DEAD, REASONS, count_tokens, image_problem, image_urls

if TYPE_CHECKING:
    from helpers.replay.server import ReplayServer


def error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Handler(BaseHTTPRequestHandler):
    replay: "ReplayServer"
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, *args: Any) -> None:
        pass  # access lines are printed in uvicorn's format by access(), not http.server's

    def access(self, status: int) -> None:
        template = self.replay.scenario.serving.get("access_log")
        if not template:
            return
        client = f"{self.client_address[0]}:{self.client_address[1]}"
        values = _Defaults(pid=os.getpid(), client=client, method=self.command, path=self.path,
                           status=status, reason=REASONS.get(status, ""))
        self.replay.player.emit(str(template).format_map(values))

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.access(status)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.access(200)

    def event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def authorized(self) -> bool:
        key = os.environ.get("VLLM_API_KEY")
        if key and self.path.startswith("/v1") and self.headers.get("Authorization") != f"Bearer {key}":
            self.send_json(401, {"error": "Unauthorized"})  # vLLM's auth middleware body
            return False
        return True

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if not self.authorized():
            return
        replay, path = self.replay, self.path.split("?")[0]
        if path == "/health":
            status = 503 if replay.state.engine_dead else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.access(status)
        elif path == "/v1/models":
            card = {"id": replay.inv.served_name, "object": "model", "created": int(time.time()),
                    "owned_by": "vllm", "root": replay.inv.model, "parent": None,
                    "max_model_len": replay.player.max_model_len}
            self.send_json(200, {"object": "list", "data": [card]})
        elif path == "/version":
            self.send_json(200, {"version": str((replay.scenario.box.get("versions") or {}).get("vllm", ""))})
        elif path == "/metrics":
            data = self.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.access(200)
        else:
            self.send_json(404, {"detail": "Not Found"})

    def metrics(self) -> str:
        replay, state = self.replay, self.replay.state
        labels = f'engine="0",model_name="{replay.inv.served_name}"'
        budget = replay.player.budget
        usage = min(1.0, state.tokens_in_flight / budget.tokens) if budget else 0.0
        lines = [
            "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} {float(state.running)}",
            "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{labels}}} {float(state.waiting)}",
            "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{{{labels}}} {usage}",
            "# TYPE vllm:num_preemptions_total counter", f"vllm:num_preemptions_total{{{labels}}} 0.0",
            "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{{{labels}}} {float(state.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {float(state.generation_tokens)}",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, count in state.finished.items():
            lines.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(count)}')
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ POST
    def do_POST(self) -> None:  # noqa: N802 - http.server API
        if not self.authorized():
            return
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_json(400, error_body("Invalid JSON body", "BadRequestError", 400))
            return
        if path not in ("/v1/chat/completions", "/v1/completions") or not isinstance(body, dict):
            self.send_json(404, {"detail": "Not Found"})
            return
        self.generate(path, body)

    def generate(self, path: str, body: dict[str, Any]) -> None:
        replay, state = self.replay, self.replay.state
        name = body.get("model")
        if name not in (None, replay.inv.served_name):
            self.send_json(404, error_body(f"The model `{name}` does not exist.", "NotFoundError", 404))
            return
        kind = replay.kind_of(path, body)
        if kind == "image":
            problem = image_problem(image_urls(body), replay.inv.mm_all_zero)
            if problem:
                self.send_json(400, error_body(problem, "BadRequestError", 400))
                return
        if state.engine_dead:
            self.send_json(500, {"error": ENGINE_DEAD})
            return
        with state.lock:
            state.generation_requests += 1
            nth = state.generation_requests
        replay.first_request()
        rule = replay.rule_for(kind, nth)
        if rule is not None:
            replay.player.play_items(rule.items)
        reply = rule.reply if rule else "ok"
        if reply == "hang":
            time.sleep(3600)
            return
        if reply == "error" and not kind.endswith("stream"):
            self.send_json(rule.status, {"error": rule.error or ENGINE_DEAD})
        else:
            self.answer(path, body, kind, reply, rule)
        if rule is not None:
            replay.after(rule)

    def answer(self, path: str, body: dict[str, Any], kind: str, reply: str, rule: Any) -> None:
        replay, state = self.replay, self.replay.state
        if path == "/v1/completions":
            prompt_tokens = count_tokens(body.get("prompt"))
        else:
            prompt_tokens = sum(count_tokens(m.get("content") if isinstance(m.get("content"), str) else "image")
                                for m in body.get("messages") or [] if isinstance(m, dict))
        count, finish = (0, "stop") if reply == "empty" else replay.output_tokens(body, kind)
        with state.lock:
            state.waiting += 1
        replay.slots.acquire()
        with state.lock:
            state.waiting -= 1
            state.running += 1
            state.tokens_in_flight += prompt_tokens
        try:
            if kind.endswith("stream"):
                self.stream(path, body, count, finish, prompt_tokens, reply, rule)
            else:
                self.plain(path, count, finish, prompt_tokens)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with state.lock:
                state.running -= 1
                state.tokens_in_flight -= prompt_tokens
                state.prompt_tokens += prompt_tokens
                state.generation_tokens += count
                state.finished[finish] += 1
                state.served_since_periodic += 1
            replay.slots.release()

    def envelope(self, path: str, chunk: bool) -> dict[str, Any]:
        chat = path == "/v1/chat/completions"
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
        prefix = "chatcmpl" if chat else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex[:16]}", "object": obj, "created": int(time.time()),
                "model": self.replay.inv.served_name}

    def plain(self, path: str, count: int, finish: str, prompt_tokens: int) -> None:
        replay = self.replay
        _pause(replay.ttft + replay.tpot * max(0, count - 1))
        text = "".join(replay.pieces(count))
        if path == "/v1/completions":
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                      "logprobs": None, "finish_reason": finish, "stop_reason": None}
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + count, "completion_tokens": count}
        self.send_json(200, {**self.envelope(path, False), "choices": [choice], "usage": usage})

    def stream(self, path: str, body: dict[str, Any], count: int, finish: str, prompt_tokens: int, reply: str,
               rule: Any) -> None:
        replay = self.replay
        chat = path == "/v1/chat/completions"
        base = self.envelope(path, True)
        self.start_stream()
        if reply == "error":
            self.event({"error": (rule.error if rule and rule.error else ENGINE_DEAD)})
            return
        if chat:
            self.event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
        _pause(replay.ttft)
        pieces = replay.pieces(count)
        for index, piece in enumerate(pieces):
            if index:
                _pause(replay.tpot)
            if reply == "stream_error" and index == 1:
                self.event({"error": (rule.error if rule and rule.error else ENGINE_DEAD)})
                return
            reason = finish if index == len(pieces) - 1 else None
            if chat:
                choice = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason, "stop_reason": None}
            self.event({**base, "choices": [choice]})
        if not pieces:
            empty = {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop"} if chat else \
                {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop", "stop_reason": None}
            self.event({**base, "choices": [empty]})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + count,
                     "completion_tokens": count}
            self.event({**base, "choices": [], "usage": usage})
        self.event("[DONE]")


def _pause(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
