"""The verdict on a whole log (`make diagnose`, and every stage run's diagnosis): PASS / FAIL /
UNKNOWN, the root-cause line, its category, when it happened (startup, capture, replay),
the hint and the next ladder rung with its command filled from the log's own evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers.catalog import Catalog, fill_rung
from helpers.graphmode import context_parallel_size
from helpers.errors import UsageError
from helpers.logscan import CAPTURE_PHASE, INCIDENT_WINDOW, RESTART_PHASE, LogScanner, scan_file


@dataclass
class Diagnosis:
    log: str
    verdict: str  # PASS | FAIL | UNKNOWN
    category: str | None = None
    false_ready: bool = False
    root_cause_line: int | None = None
    root_cause: str | None = None
    exception: str | None = None
    sig_id: str | None = None
    fact: str | None = None       # helpers/ascend_facts.yaml id when the signature is version-bound
    when: str | None = None       # startup | capture | runtime | replay: where in the life of the server
    hint_zh: str | None = None
    hint_en: str | None = None
    rung: str | None = None
    next_command: str | None = None
    next_why: str | None = None
    phase: str = ""
    lines: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "FAIL" else 0


def _args(scanner: LogScanner) -> dict[str, Any]:
    """The flags the server logged as `non-default args`."""
    args = scanner.evidence.get("non_default_args")
    return args if isinstance(args, dict) else {}


def next_step(scanner: LogScanner, rung: str | None, model: str = "", port: int | None = None,
              step: str = "stage-b", extra_args: str = "") -> dict[str, str]:
    """The command, why (and a hint override) of a ladder rung, filled from the log's own
    evidence: the model, vLLM's estimated length, the port, and whether the run was context
    parallel (then the rung's context_parallel variant: no FULL graphs, fact cp-no-full-cudagraph)."""
    entry = scanner.catalog.rungs.get(rung or "none") or {}
    args = _args(scanner)
    if not model:
        model = Path(str(args.get("model", ""))).name or "<MODEL>"
    length = scanner.evidence.get("estimated_max_model_len")
    if length is None:
        configured = args.get("max_model_len") or scanner.evidence.get("max_model_len")
        length = int(configured) // 2 if str(configured or "").isdigit() else "<smaller length>"
    values = {"model": model, "max_model_len": length, "port": port or args.get("port", "<PORT>"), "step": step}
    return fill_rung(entry, values, extra_args, context_parallel_size(args))


def diagnose(path: str | Path, model: str = "", catalog: Catalog | None = None) -> Diagnosis:
    """Read a log and say PASS / FAIL / UNKNOWN, why, and what to try next."""
    target = Path(path)
    if not str(path):
        raise UsageError("no log given", "pass LOG=path/to/server.log")
    if not target.is_file():
        raise UsageError(f"log {target} does not exist or is not a file", "pass LOG=path/to/server.log")
    try:
        scanner = scan_file(target, catalog)
    except OSError as exc:
        raise UsageError(f"cannot read log {target}: {exc.strerror or exc}", "check the path and permissions") from exc
    return diagnosis_of(scanner, str(target), model=model)


def _when(scanner: LogScanner, line_no: int, phase: str, category: str | None) -> str:
    """Where in the server's life the failure happened: startup, capture (graph capture at
    startup), replay (a graph fault while serving), runtime (any other fault after ready), or
    unknown (an excerpt with no phase or ready line to tell)."""
    graphs = scanner.catalog.graph_categories
    if category in graphs.get("replay", ()):
        return "replay"
    if category in graphs.get("capture", ()):
        return "capture"
    if scanner.ready_line is not None and line_no > scanner.ready_line:
        either = category in graphs.get("either", ())
        return "replay" if either and "eager" not in scanner.evidence else "runtime"
    if phase == CAPTURE_PHASE:
        return "capture"
    return "startup" if phase and phase != RESTART_PHASE else "unknown"


def diagnosis_of(scanner: LogScanner, log: str = "", model: str = "", step: str = "stage-b",
                 extra_args: str = "") -> Diagnosis:
    failures = scanner.failures()
    diag = Diagnosis(log=log, verdict="PASS" if scanner.ready_line else "UNKNOWN", phase=scanner.phase,
                     lines=scanner.line_no, evidence=dict(scanner.evidence),
                     failures=[h.to_dict() for h in failures[:50]])
    if not failures:
        return diag
    root, chosen = scanner.incident()
    assert root is not None
    if chosen is None or chosen.generic:
        # An unknown exception or a wrapper: name the most specific signature of the incident.
        window = [h for h in failures if h.line_no <= failures[0].line_no + INCIDENT_WINDOW]
        ranked = sorted(window, key=lambda h: (-h.specificity, h.line_no))
        chosen = next((h for h in ranked if not h.generic), chosen or ranked[0])
    diag.verdict = "FAIL"
    diag.false_ready = scanner.ready_line is not None and failures[0].line_no > scanner.ready_line
    if chosen.generic:  # only wrappers: after ready it is a false-ready, before it a startup failure
        wrapper = "startup" if chosen.category == "false-ready" else chosen.category
        diag.category = "false-ready" if diag.false_ready else wrapper
    else:
        diag.category = chosen.category
    diag.root_cause_line, diag.root_cause, diag.exception = root.line_no, root.text, root.exception
    diag.sig_id, diag.hint_zh, diag.hint_en, diag.rung = chosen.sig_id, chosen.hint_zh, chosen.hint_en, chosen.rung
    diag.fact = scanner.catalog.by_id(chosen.sig_id).fact
    diag.when = _when(scanner, root.line_no, chosen.phase, chosen.category)
    step_info = next_step(scanner, chosen.rung, model=model, step=step, extra_args=extra_args)
    diag.next_command, diag.next_why = step_info["command"], step_info["why"]
    if step_info["hint_en"]:  # the rung's own advice for this run (e.g. context parallel: no FULL graphs)
        diag.hint_zh, diag.hint_en = step_info["hint_zh"], step_info["hint_en"]
    elif "FULL" in (diag.hint_en or "") and context_parallel_size(_args(scanner)) > 1:
        note = scanner.catalog.notes.get("context_parallel_full") or {}
        diag.hint_zh, diag.hint_en = f"{diag.hint_zh}{note.get('zh', '')}", f"{diag.hint_en} {note.get('en', '')}".strip()
    return diag


def render_diagnosis(diag: Diagnosis) -> str:
    """The terminal view of a diagnosis (one fact per line, greppable)."""
    lines = [f"log:        {diag.log} ({diag.lines} lines, last phase: {diag.phase})"]
    if diag.verdict != "FAIL":
        lines.append(f"verdict:    {diag.verdict}" + ("" if diag.verdict == "PASS" else
                                                     " (no failure signature, but the server never reported ready)"))
        return "\n".join(lines)
    kind = f"{diag.category}, false-ready" if diag.false_ready and diag.category != "false-ready" else diag.category
    lines += [
        f"verdict:    FAIL ({kind}" + (f"; during {diag.when})" if diag.when != "unknown" else ")"),
        f"root cause: line {diag.root_cause_line}: {diag.root_cause}",
        f"signature:  {diag.sig_id}" + (f" (fact {diag.fact}: helpers/ascend_facts.yaml)" if diag.fact else ""),
        f"hint (zh):  {diag.hint_zh}",
        f"hint (en):  {diag.hint_en}",
    ]
    if diag.rung:
        step = diag.next_command or diag.next_why
        lines.append(f"next rung:  {diag.rung}: {step}")
        if diag.next_command and diag.next_why:
            lines.append(f"            ({diag.next_why})")
    return "\n".join(lines)
