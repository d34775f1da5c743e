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
from helpers.verdict import nextstep, phase


@dataclass
class RunInputs:
    """What the run that wrote the log had (empty for a bare log): its argv and server env, its
    stage, and the variables given on make's command line (carried into the next command)."""

    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stage: str = ""
    given: dict[str, str] = field(default_factory=dict)


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
    root_proc: str | None = None
    failure_phase: dict[str, Any] | None = None  # weight load, KV-cache allocation, graph capture ... (verdict/phase.py)
    last_line_no: int | None = None  # a start that never ended: its last line
    last_line: str = ""
    phase: str = ""
    lines: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0 only for a log that proves a ready server; a failure or a start that never ended is 1."""
        return 0 if self.verdict == "PASS" else 1

    def root_dict(self) -> dict[str, Any] | None:
        """The root cause as a run's evidence records it (the FAIL line quotes the same line)."""
        if self.root_cause_line is None:
            return None
        return {"line_no": self.root_cause_line, "text": self.root_cause, "exception": self.exception,
                "proc": self.root_proc, "sig_id": self.sig_id, "category": self.category}


def _args(scanner: LogScanner) -> dict[str, Any]:
    """The flags the server logged as `non-default args`."""
    args = scanner.evidence.get("non_default_args")
    return args if isinstance(args, dict) else {}


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _sizes(argv: list[str], args: dict[str, Any]) -> dict[str, str]:
    """The next value of each size a memory rung changes: the run's own (argv, else the logged args) halved
    or lowered; vLLM's defaults when the run set none (0.9 memory utilisation, TP 1, 16 sequences)."""
    def number(flag: str, key: str, default: float) -> float:
        text = _flag(argv, flag) or args.get(key)
        try:
            return float(text) if text is not None else default
        except (TypeError, ValueError):
            return default

    utilisation = number("--gpu-memory-utilization", "gpu_memory_utilization", 0.9)
    return {"gpu_memory_utilization": f"{max(0.5, round(utilisation - 0.05, 2)):g}",
            "gpu_memory_utilization_up": f"{min(0.98, round(utilisation + 0.05, 2)):g}",
            "max_num_seqs": str(max(1, int(number("--max-num-seqs", "max_num_seqs", 16)) // 2)),
            "tp": str(2 * int(number("--tensor-parallel-size", "tensor_parallel_size", 1)))}


def next_step(scanner: LogScanner, rung: str | None, model: str = "", port: int | None = None,
              step: str = "stage-b", extra_args: str = "", run: RunInputs | None = None) -> dict[str, str]:
    """The command, why (and a hint override) of a ladder rung, filled from the log's own
    evidence: the model, vLLM's estimated length, the port, and whether the run was context
    parallel (then the rung's context_parallel variant: no FULL graphs, fact cp-no-full-cudagraph).
    With the run's argv and env, a rung the run already had moves on to its `then:` remedy; the
    command keeps the stage and carries the variables given on make's command line."""
    run = run or RunInputs()
    args = _args(scanner)
    rung = nextstep.advance(scanner.catalog.rungs, rung, run.argv, run.env)
    entry = scanner.catalog.rungs.get(rung or "none") or {}
    if not model:
        model = Path(str(args.get("model", ""))).name or "<MODEL>"
    length = scanner.evidence.get("estimated_max_model_len")
    if length is None:
        configured = args.get("max_model_len") or scanner.evidence.get("max_model_len")
        length = int(configured) // 2 if str(configured or "").isdigit() else "<SMALLER_LENGTH>"
    values = {"model": model, "max_model_len": length, "port": port or args.get("port", "<PORT>"), "step": step,
              **_sizes(run.argv, args)}
    filled = fill_rung(entry, values, extra_args, context_parallel_size(args))
    stage = run.stage or ("a" if args.get("load_format") == "dummy" else "b")
    filled["command"] = nextstep.finish(filled["command"], run_env=run.env, given=run.given, stage=stage)
    filled["rung"] = rung or ""
    return filled


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
    return diagnosis_of(scanner, str(target), model=model, log_path=target)


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
                 extra_args: str = "", run: RunInputs | None = None, log_path: Path | None = None) -> Diagnosis:
    failures = scanner.failures()
    diag = Diagnosis(log=log, verdict="PASS" if scanner.ready_line else "UNKNOWN", phase=scanner.phase,
                     lines=scanner.line_no, evidence=dict(scanner.evidence),
                     failures=[h.to_dict() for h in failures[:50]])
    if not failures:
        if not scanner.ready_line:  # never ready, nothing failed: a stall; its last line says where
            placed, diag.last_line_no, diag.last_line = phase.classify_stall(log_path, scanner.phase, scanner.line_no)
            _advise(diag, scanner, placed, "stalled", diag.last_line, model, step, extra_args, run, None)
        return diag
    root, chosen = scanner.incident()
    assert root is not None
    if chosen is None or chosen.generic:
        # An unknown exception or a wrapper: name the most specific signature of the incident.
        window = [h for h in failures if h.line_no <= failures[0].line_no + INCIDENT_WINDOW]
        ranked = sorted(window, key=lambda h: (-h.specificity, h.line_no))
        chosen = next((h for h in ranked if not h.generic), chosen or ranked[0])
    if chosen.generic or phase.is_relay(root.text):
        # no signature names the cause: the failing process's last exception, never an HTTP line
        after_ready = bool(scanner.ready_line) and root.line_no > (scanner.ready_line or 0)
        root = phase.last_exception(scanner, scanner.ready_line if after_ready else 0) or root
    diag.verdict = "FAIL"
    diag.false_ready = scanner.ready_line is not None and failures[0].line_no > scanner.ready_line
    if chosen.generic:  # only wrappers: after ready it is a false-ready, before it a startup failure
        wrapper = "startup" if chosen.category == "false-ready" else chosen.category
        diag.category = "false-ready" if diag.false_ready else wrapper
    else:
        diag.category = chosen.category
    diag.root_cause_line, diag.root_cause, diag.exception = root.line_no, root.text, root.exception
    diag.root_proc = root.proc
    diag.sig_id, diag.hint_zh, diag.hint_en, diag.rung = chosen.sig_id, chosen.hint_zh, chosen.hint_en, chosen.rung
    diag.fact = scanner.catalog.by_id(chosen.sig_id).fact
    diag.when = _when(scanner, root.line_no, chosen.phase, chosen.category)
    placed = phase.classify(log_path, line_no=root.line_no, label=chosen.phase, ready_line=scanner.ready_line,
                            replay=diag.when == "replay",
                            weights_loaded_line=scanner.evidence_lines.get("load_weights_seconds"))
    _advise(diag, scanner, placed, diag.category, root.text, model, step, extra_args, run, chosen.rung)
    return diag


def _advise(diag: Diagnosis, scanner: LogScanner, placed: phase.Placed | None, category: str | None, text: str,
            model: str, step: str, extra_args: str, run: RunInputs | None, rung: str | None) -> None:
    """The failure's phase, that phase's fix (over the signature's), and the next command."""
    diag.failure_phase = placed.to_dict() if placed else None
    advice = phase.advise(placed, category, text)
    if advice is not None:
        rung, diag.hint_zh, diag.hint_en = advice.rung, advice.hint_zh, advice.hint_en
    if rung is None:
        return
    step_info = next_step(scanner, rung, model=model, step=step, extra_args=extra_args, run=run)
    diag.next_command, diag.next_why = step_info["command"], step_info["why"]
    diag.rung = step_info["rung"] or rung
    if step_info["hint_en"]:  # the rung's own advice for this run (e.g. context parallel: no FULL graphs)
        diag.hint_zh, diag.hint_en = step_info["hint_zh"], step_info["hint_en"]
    elif "FULL" in (diag.hint_en or "") and context_parallel_size(_args(scanner)) > 1:
        note = scanner.catalog.notes.get("context_parallel_full") or {}
        diag.hint_zh, diag.hint_en = f"{diag.hint_zh}{note.get('zh', '')}", f"{diag.hint_en} {note.get('en', '')}".strip()


def render_diagnosis(diag: Diagnosis) -> str:
    """The terminal view of a diagnosis (one fact per line, greppable)."""
    lines = [f"log:        {diag.log} ({diag.lines} lines, last phase: {diag.phase})"]
    where = diag.failure_phase or {}
    if diag.verdict != "FAIL":
        lines.append(f"verdict:    {diag.verdict}" + ("" if diag.verdict == "PASS" else
                                                     " (no failure signature, but the server never reported ready)"))
        if diag.verdict != "PASS":
            lines.append(f"last line:  {diag.last_line_no or '?'}: {diag.last_line or '(empty log)'}")
            if where:
                lines.append(f"stopped in: {where['name']} ({where['how']})")
            if diag.hint_en:
                lines += [f"hint (zh):  {diag.hint_zh}", f"hint (en):  {diag.hint_en}"]
            if diag.next_command or diag.next_why:
                lines.append(f"next rung:  {diag.rung}: {diag.next_command or diag.next_why}")
        return "\n".join(lines)
    kind = f"{diag.category}, false-ready" if diag.false_ready and diag.category != "false-ready" else diag.category
    lines += [
        f"verdict:    FAIL ({kind}" + (f"; during {diag.when})" if diag.when != "unknown" else ")"),
        f"root cause: line {diag.root_cause_line}: {diag.root_cause}",
        *([f"phase:      {where['name']} ({where['how']})"] if where else []),
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
