"""`make serve`: the documented command (Stage B, served like the documented run, as capacity and
accuracy serve) started and left running - for the steps that would start the same command
(capacity's baseline cell; accuracy already uses our running server) and for a person's own curl.
`make hygiene` stops it. A step shares it only when its own command is exactly that one (argv
and env compared), on the same checkpoint and roots, and the server answers; the step's evidence
says so (`shared_server`)."""

from __future__ import annotations

from typing import Callable

from helpers import profiles, runs, status
from helpers.capacity import theoretical_max_len
from helpers.model import Model
from helpers.plan import ServePlan, Variant
from helpers.readiness import base_url, probe_ready
from helpers.serve import ServerRecord
from helpers.settings import Settings
from helpers.stage import StageRequest, StageRun
from helpers.starts import reuse

Out = Callable[[str], None]


def documented_variant(settings: Settings, model: Model) -> tuple[Variant, str]:
    """The variant capacity and accuracy serve with (SERVE_AS), and where it comes from."""
    source = runs.documented_run(model.runs_dir) if settings.serve_as == "documented" else None
    if source is None:
        return Variant(), "the plain Stage B command" + ("" if settings.serve_as == "base" else
                                                          " (no passing full-layer Stage B recorded yet)")
    return Variant.of_record(source.data), f"like the documented run {source.run_dir}"


def serve_documented(settings: Settings, model: Model, out: Out | None = None) -> int:
    out = out or (lambda line: print(line, flush=True))
    settings.backend = settings.backend or profiles.detect_backend()
    variant, where = documented_variant(settings, model)
    profile = profiles.load(settings.backend)
    # the command capacity's baseline cell starts: its max-num-seqs (the profile's first sweep cell)
    # and its tested length (capped by the model's max_position_embeddings, as capacity caps it)
    baseline = (profile.capacity.get("sweep") or [None])[0]
    length = settings.max_model_len or profile.capacity.get("max_model_len")
    theoretical = theoretical_max_len(model)
    if length and theoretical and not settings.max_model_len:
        length = min(int(length), theoretical)
    run = StageRun(settings, model, StageRequest(step="serve", stage="b", variant=variant, make_target="serve"),
                   out=out, max_num_seqs=settings.max_num_seqs or baseline, max_model_len=length)
    run.keep_running = True
    out(f"[serve] {where}")
    code = run.run()
    if run.record.get("verdict") == "PASS":
        out(f"serving {model.name} on {base_url(settings.host, settings.port)} (left running; `make hygiene` stops "
            f"it); capacity's baseline cell and accuracy use it when their command is the same")
    return code


def shared_for(settings: Settings, model: Model, plan: ServePlan, what: str, out: Out) -> ServerRecord | None:
    """Our live server on PORT when it was started with exactly `plan` and answers; else None
    (and, when there is one, why it is not used)."""
    live = reuse.live_server(settings.runs_dir, settings.port)
    if live is None:
        return None
    now = status.observe(settings, model, settings.backend or profiles.detect_backend())
    why = reuse.shareable(live, plan, now)
    if not why:
        ready, detail = probe_ready(base_url(live.record.host, live.record.port), plan.served_name, settings.api_key)
        why = [] if ready else [f"it does not answer ({detail})"]
    if why:
        out(f"[{what}] our server on port {settings.port} (run {live.run_dir}) is not shared: {'; '.join(why)}")
        return None
    return live.record
