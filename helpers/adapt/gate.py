"""Before a Stage B start: the key-mapping dry run of an adapter architecture, and the refusal
of a start it shows is certain to fail (KEYMAP_CHECK=off starts anyway).

Runs for an architecture the installed vLLM's own registry.py does not map (an adapter in an
implementation root serves it); an architecture vLLM serves with its own class is covered by
triage's header coverage. Not on the replay backend: no vLLM loads weights there.
"""

from __future__ import annotations

from typing import Callable

from helpers import settings as settings_module
from helpers import status
from helpers.adapt import keymap, nearest
from helpers.errors import EXIT_FAIL, BringupError, UsageError
from helpers.model import Model
from helpers.settings import Settings

MODES = ("on", "off")


class KeymapRefusal(BringupError):
    """The weight mapping cannot load: the Stage B start is refused (exit 1, the model failed)."""

    exit_code = EXIT_FAIL


def mode() -> str:
    value = settings_module.raw_values().get("KEYMAP_CHECK", "on").strip().lower() or "on"
    if value not in MODES:
        raise UsageError(f"KEYMAP_CHECK={value!r} is unknown", "use KEYMAP_CHECK=on (default) or off")
    return value


def before_stage_b(settings: Settings, model: Model, backend: str, out: Callable[[str], None]) -> None:
    if mode() == "off" or backend == "replay" or not any(model.checkpoint.glob("*.safetensors")):
        return  # nothing loads weights, or there are none to prove
    sources = nearest.vllm_sources()
    architectures = model.facts.architectures
    if not sources or not architectures or all(arch in sources for arch in architectures):
        return
    out(f"keymap: {architectures[0]} is served by an adapter: proving its weight mapping before the start")
    tp = settings.tp or 1
    now = status.observe(settings, model, backend)
    found = None if settings.force else keymap.reusable(settings.runs_dir, model.name, now, tp)
    if found:
        path, result = found
        out(f"keymap: reused {path}: made on the same checkpoint, roots and versions; FORCE=1 makes it again")
    else:
        result = keymap.check(model.checkpoint, model.config, tp=tp)
        path = keymap.write(result, settings.runs_dir, model.name, keymap.made_on(now, tp))
    for line in keymap.summary(result, limit=5):
        out(f"  {line}")
    if result.failing and not result.why_fallback:
        first = (result.unmapped + result.shape + result.errors or [{"key": (result.unfilled or ["?"])[0]}])[0]
        count = len(result.unmapped) + len(result.shape) + len(result.errors) + len(result.unfilled)
        raise KeymapRefusal(f"Stage B refused: the adapter's load_weights cannot load {count} key(s) "
                            f"(first: {first['key']}; {path})",
                            "fix the adapter's weight rename and rerun make keymap; KEYMAP_CHECK=off starts anyway")
