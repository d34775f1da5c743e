"""Smoke requests: text chat, streaming chat (errors can hide inside a 200 stream), and
text+image for multimodal models. Each returns a record for requests.jsonl."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from helpers.readiness import auth_headers

SMOKE_PROMPT = "say hi"
IMAGE_PROMPT = "Describe this image in one sentence."
MAX_TOKENS = 16


@dataclass
class RequestResult:
    kind: str
    ok: bool
    status: int | None
    latency_s: float
    content: str = ""
    error: str = ""
    request_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    body_excerpt: str = ""
    finished_at: float = 0.0

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["finished_at"] = time.time()
        return record


def tiny_png(width: int = 32, height: int = 32) -> bytes:
    """A small RGB gradient PNG made by hand (no imaging library needed)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 128)) for x in range(width))
        for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(tiny_png()).decode()


def _messages(kind: str) -> list[dict[str, Any]]:
    if kind == "image":
        return [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "text", "text": IMAGE_PROMPT},
        ]}]
    return [{"role": "user", "content": SMOKE_PROMPT}]


def _payload(served_name: str, kind: str, stream: bool) -> dict[str, Any]:
    return {"model": served_name, "messages": _messages(kind), "temperature": 0,
            "max_tokens": MAX_TOKENS, "stream": stream}


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and body.get("error"):
        error = body["error"]
        return error.get("message", str(error)) if isinstance(error, dict) else str(error)
    return ""


def chat(url: str, served_name: str, *, kind: str = "text", api_key: str = "", timeout: float = 120) -> RequestResult:
    payload = _payload(served_name, kind, stream=False)
    request_id = f"bringup-{kind}-{uuid.uuid4().hex[:12]}"
    headers = {"X-Request-Id": request_id, **auth_headers(api_key)}
    started = time.monotonic()
    try:
        response = requests.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=timeout)
    except requests.Timeout:
        return RequestResult(kind, False, None, time.monotonic() - started,
                             error=f"no reply within {timeout:.0f} s", request_id=request_id, payload=payload)
    except requests.RequestException as exc:
        return RequestResult(kind, False, None, time.monotonic() - started,
                             error=f"connection failed: {exc.__class__.__name__}", request_id=request_id, payload=payload)
    latency = time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        body = None
    content, error = "", _error_text(body)
    if response.status_code == 200 and isinstance(body, dict):
        choices = body.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content") or ""
    if response.status_code != 200 and not error:
        error = f"HTTP {response.status_code}"
    if response.status_code == 200 and not content.strip() and not error:
        error = "empty output (HTTP 200 with no text)"
    return RequestResult(kind, response.status_code == 200 and bool(content.strip()) and not error,
                         response.status_code, latency, content, error, request_id, payload,
                         response.text[:2000])


def chat_stream(url: str, served_name: str, *, api_key: str = "", timeout: float = 120) -> RequestResult:
    """Streaming chat: a 200 is not enough, every event is parsed for an `error` object and the
    stream must end with [DONE]."""
    payload = _payload(served_name, "text", stream=True)
    request_id = f"bringup-stream-{uuid.uuid4().hex[:12]}"
    headers = {"X-Request-Id": request_id, **auth_headers(api_key)}
    started = time.monotonic()
    pieces: list[str] = []
    error, done, status, excerpt = "", False, None, []
    try:
        with requests.post(f"{url}/v1/chat/completions", json=payload, headers=headers,
                           timeout=timeout, stream=True) as response:
            status = response.status_code
            deadline = started + timeout
            for raw in response.iter_lines(decode_unicode=True):
                if time.monotonic() > deadline:
                    error = f"stream did not finish within {timeout:.0f} s"
                    break
                if not raw:
                    continue
                if len(excerpt) < 40:
                    excerpt.append(raw)
                if not raw.startswith("data:"):
                    continue
                data = raw[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    error = f"unparsable stream event: {data[:200]}"
                    break
                if _error_text(event):
                    error = "in-stream error: " + _error_text(event)
                    break
                for choice in event.get("choices") or []:
                    pieces.append((choice.get("delta") or {}).get("content") or "")
    except requests.Timeout:
        error = f"no reply within {timeout:.0f} s"
    except requests.RequestException as exc:
        error = f"connection failed: {exc.__class__.__name__}"
    content = "".join(pieces)
    if not error and status != 200:
        error = f"HTTP {status}"
    if not error and not done:
        error = "stream ended without [DONE]"
    if not error and not content.strip():
        error = "empty output (stream with no text)"
    return RequestResult("stream", not error, status, time.monotonic() - started, content, error,
                         request_id, payload, "\n".join(excerpt)[:2000])
