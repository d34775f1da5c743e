"""The graph-mode part of a stage run (helpers/graphmode.py decides what proves a mode): which
mode the command selects, the warnings before a start, the evidence after the first request, and
a PASS without that evidence turned into its own FAIL where the profile says graph mode decides."""

from __future__ import annotations

import os
import shlex
import time
from typing import Any

from helpers import graphmode
from helpers.verdict import nextstep


class GraphChecks:
    """Mixed into StageRun: reads its profile, plan, scanner and record."""

    def _graph_mode(self) -> graphmode.GraphMode:
        box = self.profile.facts_box()
        versions = box.versions(self.profile.versions)
        return graphmode.select(self.profile.graph, self.plan.argv, self.plan.process_env(dict(os.environ)),
                                {**versions, **box.builds(versions)}, box.source_contains)

    def _graph_check(self) -> dict[str, Any]:
        """The graph mode's evidence (graphmode.py): on ascend a replay line after the first request."""
        if not self.profile.graph_expected:
            name = self.profile.graph.get("name", "graph")
            return {"name": name, "status": "NOT_APPLICABLE", "reason": f"backend {self.profile.name} captures no graphs"}
        mode = self._graph_mode()
        scan = self.scanner
        deadline = time.monotonic() + 1.0  # the replay line is logged right after the first replay
        while (mode.expects == "replay" and time.monotonic() < deadline
               and not graphmode.found(mode, scan.evidence, scan.evidence_lines, self.first_request_line)):
            self._pump()
            time.sleep(0.1)
        return graphmode.judge(mode, scan.evidence, scan.evidence_lines, self.first_request_line)

    def _start_warnings(self) -> None:
        """What this box and command say before the start: FULL graphs asked for under context
        parallel (fact cp-no-full-cudagraph); a soft-partitioned NPU cannot capture PIECEWISE graphs
        (fact soft-partition-piecewise-unsupported)."""
        if self.profile.graph_expected:  # the command itself asks for FULL graphs under context parallel
            full_cp = graphmode.full_under_context_parallel(self.plan.argv)
            if full_cp:
                self.warnings.append(full_cp)
        spec = self.profile.graph.get("soft_partition") or {}
        if not spec or self._graph_mode().expects == "none" or not graphmode.captures_piecewise(self.plan.argv):
            return
        seen = graphmode.soft_partition(spec, self.profile.facts_box().device_view(spec.get("files") or []))
        if seen:
            self.warnings.append(graphmode.soft_partition_warning(seen, graphmode.context_parallel_size(self.plan.argv)))

    def _graph_decides(self) -> None:
        """Where the profile says graph mode decides (ascend), a run without its graph evidence
        is no PASS: its own category, the hint, and the ladder's next rung."""
        rec, graph = self.record, self.record.get("graph") or {}
        if graph.get("status") != "FAIL" or not self.profile.graph.get("decides"):
            return
        rec["verdict"], rec["category"] = "FAIL", graph.get("category") or "graph-not-replayed"
        rec["reason"] = f"graph mode ({graph['name']}): {graph['reason']}"
        model = shlex.quote(self.model.requested or self.model_name)
        inputs = self._run_inputs()
        rec["diagnosis"] = {"category": rec["category"], "signature": None, "hint_zh": graph.get("hint_zh"),
                            "hint_en": graph.get("hint_en"), "rung": "eager",
                            "next_command": nextstep.finish(f"make eager MODEL={model}", run_env=inputs.env,
                                                            given=inputs.given, stage=inputs.stage)}
