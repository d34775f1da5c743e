"""What an unset TP or MAX_MODEL_LEN becomes for a run, and where that value came from.

The profile says (`defaults:` in helpers/profiles/<backend>.yaml): on ascend TP comes from
triage's TP plan for this box (`tp_from_triage`), and the length follows the workflow's serve
template (`max_model_len_from_template`): the practical max length capacity.json found for this
checkpoint, else the template length capped by the model's max_position_embeddings. Without those
keys (cpu, cuda) the profile's plain defaults apply. A value the user set always wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from helpers import evidence as ev
from helpers.model import Model
from helpers.profiles import Profile
from helpers.settings import Settings
from helpers.triage import current_facts


@dataclass
class Chosen:
    value: int | None   # None: the profile's plain default (build_plan fills it in)
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_tp(settings: Settings, model: Model, profile: Profile,
              out: Callable[[str], None] | None = None) -> Chosen:
    if settings.tp:
        return Chosen(settings.tp, "TP (make variable, environment or .env)")
    default = int(profile.defaults.get("tp", 1) or 1)
    if not profile.defaults.get("tp_from_triage"):
        return Chosen(None, f"profile {profile.name} default {default}")
    facts = current_facts(settings, model, profile.name, out)
    plan = facts.parallel
    # triage's own plan, not a TP someone passed to an earlier `make triage`
    tp = plan.get("suggested_tp") or plan.get("tp")
    if not tp:
        return Chosen(None, f"profile {profile.name} default {default}: triage has no TP plan ({facts.source})")
    return Chosen(int(tp), f"from triage: {plan.get('tp_reason')} ({facts.source}, {facts.path})")


def practical_length(model: Model) -> tuple[int, str] | None:
    """capacity.json's practical max length for this checkpoint, with how it was found."""
    path = model.runs_dir / "capacity.json"
    if not path.is_file():
        return None
    try:
        data = ev.read_json(path)
    except (OSError, ValueError):
        return None
    practical = data.get("practical_max_len")
    if not isinstance(practical, int) or data.get("model_path") != str(model.checkpoint):
        return None
    return practical, f"capacity.json practical max length ({data.get('practical_source')}, {path})"


def choose_max_model_len(settings: Settings, model: Model, profile: Profile) -> Chosen:
    if settings.max_model_len:
        return Chosen(settings.max_model_len, "MAX_MODEL_LEN (make variable, environment or .env)")
    template = profile.defaults.get("max_model_len_from_template")
    if not template:
        return Chosen(None, f"profile {profile.name} default {profile.defaults.get('max_model_len')}")
    found = practical_length(model)
    if found:
        return Chosen(found[0], found[1])
    limit = model.facts.max_position_embeddings
    length = serve_template_length(int(template), limit)
    if length != int(template):
        return Chosen(length, f"serve template {template} capped by max_position_embeddings {limit} (config.json)")
    return Chosen(length, f"serve template {template} (max_position_embeddings {limit or 'not in config'})")


def serve_template_length(template: int, max_position_embeddings: int | None) -> int:
    """The workflow's serve-template length before any capacity result: the template, capped by
    the model's max_position_embeddings (the runbooks' plain-shell lines use the same rule)."""
    limit = max_position_embeddings
    return limit if isinstance(limit, int) and 0 < limit < template else template


def choose(settings: Settings, model: Model, profile: Profile,
           out: Callable[[str], None] | None = None) -> dict[str, Chosen]:
    return {"tp": choose_tp(settings, model, profile, out),
            "max_model_len": choose_max_model_len(settings, model, profile)}
