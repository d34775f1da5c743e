"""Find where any of several literals occur, in one pass over the text.

The log scanner (helpers/logscan.py) asks two such questions. In gated mode, for every chunk of a
multi-GB log: which lines hold one of the catalog's `runtime_gates` (MultiFind). In full mode,
for every line: which regexes' required literals it holds (LiteralIndex). One search per literal
made the scan slower with every gate or signature added; ahocorasick-rs (Rust `aho-corasick`,
SIMD "Teddy" search for small literal sets) answers for all of them in one pass. Without it (a
box where the wheel does not install) the same answers come from one search per literal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

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


@dataclass(frozen=True)
class LiteralIndex:
    """Which of a catalog's regexes can match a line: those without required literals, and those
    one of whose required literals (helpers/catalog.py required_literals) occurs in it. All the
    literals are looked for in one pass, so a longer catalog costs a line next to nothing; the
    regexes run only on the candidates."""

    required: tuple[tuple[str, ...] | None, ...]    # per regex, in catalog order
    fast: bool = True
    _automaton: Any = field(default=None, init=False, repr=False, compare=False)
    _owners: tuple[tuple[int, ...], ...] = field(default=(), init=False, repr=False, compare=False)
    _checked: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a 1-2 character literal would match all over a line: those regexes test it with `in`
        indexed = {i: lits for i, lits in enumerate(self.required) if lits and min(map(len, lits)) >= 3}
        literals = sorted({lit for lits in indexed.values() for lit in lits})
        if not (self.fast and ahocorasick_rs is not None and literals):
            return
        position = {lit: n for n, lit in enumerate(literals)}
        owners: list[list[int]] = [[] for _ in literals]
        for i, lits in indexed.items():
            for lit in lits:
                owners[position[lit]].append(i)
        object.__setattr__(self, "_automaton", ahocorasick_rs.AhoCorasick(literals))
        object.__setattr__(self, "_owners", tuple(map(tuple, owners)))
        object.__setattr__(self, "_checked", tuple(i for i in range(len(self.required)) if i not in indexed))

    def candidates(self, text: str) -> list[int]:
        """Indices (ascending, i.e. catalog order) of the regexes worth running on text."""
        if self._automaton is None:
            return self._plain(text, range(len(self.required)))
        found = set(self._plain(text, self._checked))
        owners = self._owners
        for literal, _, _ in self._automaton.find_matches_as_indexes(text, overlapping=True):
            found.update(owners[literal])
        return sorted(found)

    def _plain(self, text: str, indices: Iterable[int]) -> list[int]:
        out = []
        for i in indices:
            lits = self.required[i]
            if lits is None:
                out.append(i)
                continue
            for lit in lits:
                if lit in text:
                    out.append(i)
                    break
        return out


@lru_cache(maxsize=16)
def literal_index(required: tuple[tuple[str, ...] | None, ...]) -> LiteralIndex:
    """One index per catalog (every line of a startup is asked)."""
    return LiteralIndex(required)
