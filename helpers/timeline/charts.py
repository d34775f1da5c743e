"""timeline.png and capacity.png: a thin matplotlib layer (headless Agg) over data the evidence
already holds. The data each chart draws is returned by a function of its own (timeline_bars,
capacity_points), so what a chart shows can be checked against the log and capacity.json. Where
matplotlib is not installed, drawing raises ChartsUnavailable with one line and the text
outputs stay complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.timeline.phases import milestone_names
from helpers.timeline.starts import Start

TIMELINE_PNG = "timeline.png"
CAPACITY_PNG = "capacity.png"


class ChartsUnavailable(RuntimeError):
    """matplotlib cannot be imported (a box where setup could not install it)."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ChartsUnavailable(f"matplotlib is not installed ({exc}); `make setup` installs it, "
                                "the text and JSON outputs are complete without it") from exc
    matplotlib.use("Agg")  # headless: no display on a box or in CI
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- timeline
def timeline_bars(starts: list[Start]) -> list[dict[str, Any]]:
    """One bar per phase seen, one row per start (oldest at the top): what timeline.png draws."""
    bars = []
    for row, start in enumerate(starts):
        for phase in start.seen():
            bars.append({"row": row, "label": start.label, "phase": phase["name"], "left": phase["start_s"],
                         "width": phase["duration_s"], "verdict": start.verdict})
    return bars


def draw_timeline(starts: list[Start], path: Path) -> Path:
    plt = _pyplot()
    names = milestone_names()
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    bars = timeline_bars(starts)
    figure, axes = plt.subplots(figsize=(11, 1.6 + 0.45 * max(len(starts), 1)))
    for bar in bars:
        axes.barh(bar["row"], bar["width"], left=bar["left"], color=colours[bar["phase"]], edgecolor="white",
                  height=0.6)
    for row, start in enumerate(starts):
        end = max((p["end_s"] for p in start.seen()), default=0.0)
        # the launch is rarely known (old or replayed logs); requests and failures are not phases every start has
        unknown = [n for n in start.unknown() if n not in ("process up", "first request", "replay seen", "failure")]
        axes.text(end, row, f"  {start.verdict}" + (f"  unknown: {', '.join(unknown[:3])}" if unknown else ""),
                  va="center", fontsize=7)
    longest = max((b["left"] + b["width"] for b in bars), default=1.0) or 1.0
    axes.set_xlim(0, longest * 1.5)  # room for the verdict and the unknown phases beside each bar
    axes.set_yticks(range(len(starts)), [s.label for s in starts], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("seconds (from the launch where known, else from the first log line)")
    used = [n for n in names if any(b["phase"] == n for b in bars)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in used]
    figure.legend(handles, used, fontsize=7, loc="lower center", ncols=max(min(len(used), 8), 1), frameon=False)
    axes.set_title("server starts: each phase ends at its milestone's line in serve.log", fontsize=9)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------- capacity
SERIES = ("output_throughput", "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms")


def capacity_points(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per cell that measured a load (its metrics), in capacity.json's order."""
    points = []
    for cell in doc.get("cells") or []:
        metrics = cell.get("metrics") or {}
        if not (cell.get("completed") or metrics.get("completed")):
            continue
        usage = (cell.get("server_metrics") or {}).get("max_kv_cache_usage_perc")
        points.append({"key": cell.get("key"), "max_num_seqs": cell["max_num_seqs"],
                       "max_model_len": cell["max_model_len"], "verdict": cell.get("verdict"),
                       "kv_cache_usage_perc": None if usage is None else round(usage * 100, 1),
                       **{name: metrics.get(name) for name in SERIES}})
    return points


def draw_capacity(doc: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    points = capacity_points(doc)
    figure, (speed, ttft, tpot) = plt.subplots(1, 3, figsize=(13, 4))
    for length in dict.fromkeys(p["max_model_len"] for p in points):
        mine = [p for p in points if p["max_model_len"] == length]
        seqs = [p["max_num_seqs"] for p in mine]
        speed.plot(seqs, [p["output_throughput"] for p in mine], marker="o", label=f"max-model-len {length}")
        for p in mine:
            if p["kv_cache_usage_perc"] is not None:
                speed.annotate(f"KV {p['kv_cache_usage_perc']:g}%", (p["max_num_seqs"], p["output_throughput"]),
                               fontsize=7, textcoords="offset points", xytext=(4, 4))
        for axes, metric in ((ttft, "ttft"), (tpot, "tpot")):
            for pct, style in (("p50", "-"), ("p99", "--")):
                axes.plot(seqs, [p[f"{pct}_{metric}_ms"] for p in mine], style, marker="o",
                          label=f"{pct} {length}")
    for axes, title, unit in ((speed, "output tokens/s", "tok/s"), (ttft, "TTFT", "ms"), (tpot, "TPOT", "ms")):
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("max-num-seqs")
        axes.set_ylabel(unit)
        axes.set_xticks(sorted({p["max_num_seqs"] for p in points}))
        if points:
            axes.legend(fontsize=7)
    practical, theoretical = doc.get("practical_max_len"), doc.get("theoretical_max_len")
    figure.suptitle(f"{doc.get('model')} ({doc.get('backend')}): practical max length "
                    f"{practical if practical is not None else 'not measured'} of theoretical "
                    f"{theoretical if theoretical is not None else 'unknown'}; KV = peak KV-cache usage",
                    fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
