"""Plays scenario blocks: prints lines with their recorded pacing (compressed), runs the actions
(pause, ready, exit, hang) and fills in template lines.

Pacing: a line's `MM-DD HH:MM:SS` stamp is compared with the previous stamped line of the same
block; the difference (capped by timing.max_gap) times timing.scale, divided by REPLAY_SPEED, is
slept before the line. REPLAY_SPEED=0 plays without any delay (unit tests of the text only).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from helpers.replay.invocation import Budget, Invocation, holds
from helpers.replay.scenario import Block, Item, Scenario, stamp_seconds

DEFAULT_SCALE = 0.02
DEFAULT_MAX_GAP = 600.0


class _Defaults(dict):
    """format_map mapping that leaves an unknown {placeholder} visible instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@dataclass
class Pace:
    scale: float
    max_gap: float
    speed: float

    @classmethod
    def from_scenario(cls, scenario: Scenario, env: dict[str, str]) -> "Pace":
        raw = env.get("REPLAY_SPEED", "1") or "1"
        try:
            speed = float(raw)
        except ValueError:
            speed = 1.0
        return cls(scale=float(scenario.timing.get("scale", DEFAULT_SCALE)),
                   max_gap=float(scenario.timing.get("max_gap", DEFAULT_MAX_GAP)), speed=speed)

    def seconds(self, recorded: float) -> float:
        """Replay seconds for `recorded` seconds of the original run."""
        if self.speed <= 0:
            return 0.0
        return max(recorded, 0.0) * self.scale / self.speed

    def gap(self, previous: float | None, stamp: float) -> float:
        """Recorded seconds between two stamped lines of a block. A negative gap or one above
        max_gap is where lines of two recorded runs were spliced: it counts as no time at all
        (long silences are written as explicit pauses instead)."""
        if previous is None:
            return 0.0
        delta = stamp - previous
        return delta if 0 <= delta <= self.max_gap else 0.0


@dataclass
class Player:
    scenario: Scenario
    inv: Invocation
    pace: Pace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    on_ready: Callable[[], None] = lambda: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        kv = self.scenario.kv
        self.budget = Budget(int(kv.get("tokens", 1 << 30)), float(kv.get("gib", 1.0)),
                             int(kv.get("block_size", 128))) if kv else None
        default_len = int(self.scenario.model.get("default_max_model_len")
                          or self.scenario.model.get("max_position_embeddings") or 4096)
        self.max_model_len = self.inv.max_model_len(default_len)
        self.budget_fits = self.budget.fits(self.max_model_len) if self.budget else True
        self.values = self._template_values()

    # ------------------------------------------------------------------ conditions / templates
    def holds(self, condition: dict[str, Any] | None) -> bool:
        return holds(condition, self.inv, self.budget_fits)

    def _template_values(self) -> dict[str, Any]:
        inv, length = self.inv, self.max_model_len
        values: dict[str, Any] = {
            "pid": os.getpid(), "model": inv.model, "served_name": inv.served_name, "host": inv.host,
            "port": inv.port, "tp": inv.tp, "max_num_seqs": inv.max_num_seqs, "max_model_len": length,
            "non_default_args": repr(inv.non_default_args()),
            "spec_method": inv.json_value("--speculative-config").get("method", ""),
            "load_format": inv.value("--load-format") or "auto",
        }
        # Expert parallelism: EP size is TP x DP (vLLM); rank 0's slice of the expert map, in
        # vLLM's get_compressed_expert_map form ("0->0, 1->1, ...").
        experts = int(self.scenario.model.get("num_experts") or 0)
        ep_size = inv.tp * int(inv.value("--data-parallel-size") or 1)
        if experts:
            local = max(1, experts // ep_size)
            values.update(ep_size=ep_size, global_experts=experts, local_experts=local,
                          expert_map_rank0=", ".join(f"{i}->{i}" for i in range(local)))
        if self.budget:
            values.update(kv_tokens=self.budget.tokens, kv_gib=self.budget.gib,
                          num_blocks=self.budget.tokens // self.budget.block_size,
                          estimate=self.budget.estimate(),
                          needed_gib=f"{self.budget.needed_gib(length):.2f}",
                          available_gib=f"{self.budget.gib:.2f}",
                          concurrency=f"{self.budget.concurrency(length):.2f}")
        return values

    def render(self, item: Item) -> str:
        text = item.text.format_map(_Defaults(self.values)) if item.kind == "template" else item.text
        for rewrite in self.scenario.rewrites:
            if self.holds(rewrite.when):
                text = rewrite.pattern.sub(rewrite.replace, text)
        return text

    # ------------------------------------------------------------------ output
    def emit(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    # ------------------------------------------------------------------ playing
    def active(self, blocks: list[Block]) -> list[Block]:
        return [block for block in blocks if self.holds(block.when)]

    def play(self, blocks: list[Block], *, realtime: bool = True) -> None:
        for block in self.active(blocks):
            self.play_items(block.items, gap=block.gap, realtime=realtime, busy=block.busy)

    def play_items(self, items: list[Item], gap: float = 0.0, realtime: bool = True, busy: bool = False) -> None:
        """Print the items; the time between stamped lines passes idle, or burning CPU when the
        block is `busy` (a compile whose only output is its first and last line)."""
        previous: float | None = None
        pending_gap = gap
        for item in items:
            if item.kind in ("line", "template"):
                text = self.render(item)
                stamp = stamp_seconds(text)
                delay = pending_gap
                if stamp is not None:
                    delay += self.pace.gap(previous, stamp)
                    previous = stamp
                pending_gap = 0.0
                if realtime:
                    (self.burn if busy else self.sleep)(self.pace.seconds(delay))
                self.emit(text)
            elif item.kind == "pause":
                seconds = self.pace.seconds(item.seconds) if realtime else 0.0
                (self.burn if item.busy else self.sleep)(seconds)
            elif item.kind == "ready":
                self.on_ready()
            elif item.kind == "exit":
                self.exit(item.code)
            elif item.kind == "hang":
                self.hang()

    def planned_seconds(self, blocks: list[Block]) -> float:
        """Replay seconds the active blocks take (pauses and line gaps, no actions)."""
        total = 0.0
        for block in self.active(blocks):
            previous, pending = None, block.gap
            for item in block.items:
                if item.kind in ("line", "template"):
                    stamp = stamp_seconds(self.render(item))
                    delay = pending
                    if stamp is not None:
                        delay += self.pace.gap(previous, stamp)
                        previous = stamp
                    pending = 0.0
                    total += self.pace.seconds(delay)
                elif item.kind == "pause":
                    total += self.pace.seconds(item.seconds)
        return total

    # ------------------------------------------------------------------ time and process
    @staticmethod
    def sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    @staticmethod
    def burn(seconds: float) -> None:
        """Silent but busy (compile, graph capture): CPU time advances, nothing is printed."""
        end = time.monotonic() + seconds
        total = 0
        while time.monotonic() < end:
            total += sum(range(2000))

    @staticmethod
    def hang() -> None:
        """Silent and idle forever (a dead collective): no CPU time, no output."""
        while True:
            time.sleep(3600)

    def exit(self, code: int) -> None:
        with self.lock:
            self.out.flush()
        os._exit(code)
