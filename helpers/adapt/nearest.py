"""The registered vLLM architectures nearest to a checkpoint vLLM does not know, ranked, with why.

Two kinds of evidence, both read without loading a tensor:
- config facts (attention kind, QK norm, q/k/v bias, MoE and shared experts, activation, norm,
  sliding window), compared with what each candidate class implements (architectures.yaml);
- weight names from the safetensors headers, layer and expert indices folded, compared with the
  names the candidate's load_weights takes. Names that differ only by a consistent rename
  (a prefix, module names) are matched through that rename, and the rename is stated.
The first candidate's vLLM source file and class come from the installed vLLM's registry.py.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from helpers import load_yaml
from helpers import box
from helpers.changes_registry import vllm_entries
from helpers.checkpoint import QUANT_AUX, ConfigFacts, TensorInfo, lookup

RULES_PATH = Path(__file__).with_name("architectures.yaml")
CHANGES_RULES = Path(__file__).parents[1] / "changes.yaml"  # where registry.py keeps its tables
INDEX = re.compile(r"\.\d+(?=\.|$)")
SUFFIX = re.compile(r"\.(weight|bias)$")
WEIGHT_SHARE = 0.7  # weights decide; facts break ties and give the reasons


@dataclass
class Candidate:
    arch: str
    facts: dict[str, Any]
    weights: list[str]


@dataclass
class Ranked:
    arch: str
    score: float
    weights_matched: int
    weights_total: int
    rename: list[list[str]]        # [checkpoint component, candidate component], in the order found
    unmatched: list[str]           # folded checkpoint names the candidate does not take, after the rename
    reasons: list[str]
    vllm_file: str = ""
    vllm_class: str = ""


@dataclass
class Fingerprint:
    names: list[str]               # folded module names, suffix dropped
    facts: dict[str, Any]
    evidence: dict[str, str] = field(default_factory=dict)


def load_candidates(path: Path = RULES_PATH) -> list[Candidate]:
    data = load_yaml(path.read_text(encoding="utf-8"))
    return [Candidate(arch, spec["facts"], list(spec["weights"])) for arch, spec in data["candidates"].items()]


def fold(name: str) -> str:
    """`model.layers.3.mlp.experts.17.up_proj.weight` -> `model.layers.#.mlp.experts.#.up_proj`."""
    return INDEX.sub(".#", SUFFIX.sub("", name))


def fingerprint(config: dict[str, Any], facts: ConfigFacts, tensors: dict[str, TensorInfo]) -> Fingerprint:
    names = sorted({fold(n) for n in tensors if not QUANT_AUX.search(n)})
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    biases = {SUFFIX.sub("", n).rsplit(".", 1)[-1] for n in tensors if n.endswith(".bias")}
    heads, kv = facts.num_attention_heads, facts.num_key_value_heads
    attention = "mla" if facts.mla else ("gqa" if heads and kv and kv < heads else "mha")
    act, _ = lookup(config, "hidden_act")
    window, _ = lookup(config, "sliding_window")
    use_window, _ = lookup(config, "use_sliding_window")
    norm = "layer" if lookup(config, "layer_norm_eps")[0] is not None and lookup(config, "rms_norm_eps")[0] is None \
        else "rms"
    rope = facts.rope_scaling if isinstance(facts.rope_scaling, dict) else {}
    shared = bool(facts.moe.get("shared_experts")) or any("shared_expert" in n for n in names)
    found = {
        "attention": attention,
        "qk_norm": bool({"q_norm", "k_norm"} & leaves),
        "qkv_bias": bool(biases & {"q_proj", "k_proj", "v_proj", "qkv_proj"}) or bool(
            lookup(config, "attention_bias")[0]) or bool(lookup(config, "qkv_bias")[0]),
        "moe": bool(facts.moe["is_moe"]),
        "shared_experts": shared,
        "activation": str(act or "silu"),
        "norm": norm,
        "sliding_window": bool(window) and use_window is not False,
    }
    evidence = {
        "attention": f"{heads} heads, {kv} KV heads" + (", kv_lora_rank (MLA)" if facts.mla else ""),
        "rope": str(rope.get("rope_type") or rope.get("type") or "default"),
        "tied embeddings": str(facts.tie_word_embeddings).lower(),
    }
    return Fingerprint(names, found, evidence)


# --- the rename -----------------------------------------------------------------------------

def _best_partner(name: str, targets: list[str]) -> tuple[str, list[tuple[str, str]]] | None:
    """The candidate name this checkpoint name differs from in the fewest components (ties broken
    by how alike the differing components read); None when nothing of the same depth exists."""
    parts = name.split(".")
    best: tuple[int, float, str, list[tuple[str, str]]] | None = None
    for target in targets:
        other = target.split(".")
        if len(other) != len(parts):
            continue
        pairs = [(a, b) for a, b in zip(parts, other) if a != b]
        likeness = sum(difflib.SequenceMatcher(None, a, b).ratio() for a, b in pairs)
        key = (len(pairs), -likeness)
        if best is None or key < (best[0], best[1]):
            best = (len(pairs), -likeness, target, pairs)
    return (best[2], best[3]) if best else None


def infer_rename(names: list[str], targets: list[str]) -> dict[str, str]:
    """Component renames (checkpoint -> candidate) that the checkpoint's names agree on: each
    unmatched name votes for the differences to its nearest candidate name; a component is
    renamed when most of its votes go one way. Repeated until nothing new is learned."""
    target_set = set(targets)
    rename: dict[str, str] = {}
    for _ in range(4):
        votes: dict[str, dict[str, int]] = {}
        for name in names:
            renamed = apply_rename(name, rename)
            if renamed in target_set:
                continue
            partner = _best_partner(renamed, targets)
            if partner is None:
                continue
            for a, b in partner[1]:
                votes.setdefault(a, {}).setdefault(b, 0)
                votes[a][b] += 1
        learned = False
        for a, counts in votes.items():
            b, count = max(counts.items(), key=lambda kv: kv[1])
            if a not in rename and a != "#" and b != "#" and count * 2 > sum(counts.values()):
                rename[a] = b
                learned = True
        if not learned:
            break
    # a rename onto a component the checkpoint already uses would merge two tensors: not a rename
    components = {part for name in names for part in name.split(".")}
    rename = {a: b for a, b in rename.items() if b not in components or b in rename}
    # nor is one that sends two components to the same name
    targets_hit = [b for b in rename.values()]
    rename = {a: b for a, b in rename.items() if targets_hit.count(b) == 1}
    # keep only renames that make some name match
    useful = {a: b for a, b in rename.items()
              if any(a in n.split(".") and apply_rename(n, rename) in target_set for n in names)}
    return useful


def apply_rename(name: str, rename: dict[str, str]) -> str:
    return ".".join(rename.get(part, part) for part in name.split("."))


# --- ranking --------------------------------------------------------------------------------

def compare(print_: Fingerprint, candidate: Candidate) -> Ranked:
    targets = candidate.weights
    rename = infer_rename(print_.names, targets)
    renamed = [apply_rename(n, rename) for n in print_.names]
    target_set = set(targets)
    matched = [n for n in renamed if n in target_set]
    unmatched = [n for n, r in zip(print_.names, renamed) if r not in target_set]
    missing = sorted(target_set - set(renamed) - {"lm_head"})
    union = len(set(renamed) | (target_set - {"lm_head"})) or 1
    weight_score = len(set(matched)) / union
    agree, differ = [], []
    for key, want in candidate.facts.items():
        have = print_.facts.get(key)
        same = have == want or (key == "attention" and want == "gqa" and have == "mha") or \
            (key == "sliding_window" and not have)
        (agree if same else differ).append((key, have, want))
    fact_score = len(agree) / (len(agree) + len(differ) or 1)
    reasons = []
    if differ:
        reasons += [f"{k}: checkpoint {h}, {candidate.arch} {w}" for k, h, w in differ]
    if agree:
        reasons.append("same " + ", ".join(f"{k} ({h})" for k, h, _ in agree))
    weights_line = f"weights: {len(set(matched))} of {len(set(renamed))} checkpoint names are its own"
    if rename:
        weights_line += " after the rename " + ", ".join(f"{a} -> {b}" for a, b in rename.items())
    if missing:
        weights_line += f"; it also expects {', '.join(missing[:3])}"
    reasons.insert(0, weights_line)
    return Ranked(candidate.arch, round(WEIGHT_SHARE * weight_score + (1 - WEIGHT_SHARE) * fact_score, 3),
                  len(set(matched)), len(set(renamed)), [[a, b] for a, b in rename.items()], unmatched, reasons)


def vllm_sources() -> dict[str, tuple[str, str]]:
    """arch -> (file relative to the vLLM package's parent, class), read from the installed
    vLLM's registry.py with ast (vLLM is not imported)."""
    package = box.package_source_dir("vllm")
    if package is None:
        return {}
    rules = load_yaml(CHANGES_RULES.read_text(encoding="utf-8"))["registry"]["vllm"]
    entries, _why = vllm_entries(package.parent, rules)
    return {e.arch: (e.module_path, e.cls) for e in entries}


def rank(config: dict[str, Any], facts: ConfigFacts, tensors: dict[str, TensorInfo],
         limit: int = 3) -> dict[str, Any]:
    """{nearest: [Ranked...], facts, evidence, vllm_version}: the best `limit` candidates."""
    print_ = fingerprint(config, facts, tensors)
    sources = vllm_sources()
    ranked = sorted((compare(print_, c) for c in load_candidates()), key=lambda r: (-r.score, r.arch))
    for entry in ranked:
        entry.vllm_file, entry.vllm_class = sources.get(entry.arch, ("", ""))
    top = [r for r in ranked if not sources or r.arch in sources][:limit]
    return {"nearest": [asdict(r) for r in top], "facts": print_.facts, "evidence": print_.evidence,
            "vllm_version": box.package_version("vllm"), "weights_read": bool(print_.names)}
