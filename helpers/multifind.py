"""Find where any of several literal byte strings occur, in one pass over the text.

The log scanner's gated mode (helpers/logscan.py) asks, for every chunk of a multi-GB log, which
lines hold one of the catalog's `runtime_gates`. One `bytes.find` pass per gate made the scan
slower with every gate added; ahocorasick-rs (Rust `aho-corasick`, SIMD "Teddy" search for
small literal sets) answers for all of them in one pass at several GB/s. Without it (a box where
the wheel does not install) the same answer comes from one `bytes.find` pass per literal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

try:
    import ahocorasick_rs
except ImportError:  # the pure-Python search below gives the same answers, slower
    ahocorasick_rs = None


@dataclass(frozen=True)
class MultiFind:
    """Offsets where the literals start. Leftmost-first and non-overlapping: a line (text between
    two \\n) that holds any literal gets at least one offset, since no literal holds a \\n."""

    literals: tuple[bytes, ...]
    fast: bool = True                 # False: the pure-Python search (tests compare the two)
    _automaton: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(not lit or b"\n" in lit for lit in self.literals):
            raise ValueError(f"literals must be non-empty and hold no newline: {self.literals!r}")
        if self.fast and ahocorasick_rs is not None and self.literals:
            automaton = ahocorasick_rs.BytesAhoCorasick(list(self.literals),
                                                        matchkind=ahocorasick_rs.MatchKind.LeftmostFirst)
            object.__setattr__(self, "_automaton", automaton)

    @property
    def engine(self) -> str:
        return "ahocorasick-rs" if self._automaton is not None else "bytes.find"

    def offsets(self, data: bytes | bytearray, start: int = 0, end: int | None = None) -> list[int]:
        """Sorted offsets in data[start:end] where a literal begins (at least one per line holding one)."""
        end = len(data) if end is None else end
        if self._automaton is not None:
            return [start + at for _, at, _ in self._automaton.find_matches_as_indexes(memoryview(data)[start:end])]
        found: set[int] = set()
        for lit in self.literals:
            at = data.find(lit, start, end)
            while at >= 0:
                found.add(at)
                line_end = data.find(b"\n", at, end)  # one offset per line is enough
                at = data.find(lit, line_end + 1, end) if line_end >= 0 else -1
        return sorted(found)


@lru_cache(maxsize=16)
def multi_find(literals: tuple[bytes, ...]) -> MultiFind:
    """One finder per literal set (the catalog's gates are searched in every chunk of every scan)."""
    return MultiFind(literals)
