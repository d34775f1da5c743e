"""`make context`: the workflow's "collect context" step as a check with evidence.

What it confirms: the checkpoint exists; the implementation roots (VLLM_SRC, VLLM_ASCEND_SRC) are
git work trees (HEAD, branch, dirty files); which delivery repo `make deliver` will commit to;
the versions of vllm, vllm_ascend, torch, torch_npu and transformers and where each is imported
from (the profile's box answers, so a replay scenario reports its recorded paths); which
processes hold NPU memory (npu-smi's process table), ours (our state files) or someone else's,
never touched; whether the NPUs and the port the plan needs are free. It is cheap (git status
and npu-smi run in parallel) because every triage and every stage run collects it first and
records it in its evidence; `make status` compares those records with the box of today.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path
from typing import Any

from helpers import evidence as ev
from helpers import npus as npu_table
from helpers import profiles, sourcetree
from helpers.errors import EnvironmentProblem
from helpers.model import Model, checkpoint_fingerprint
from helpers.plan import ServePlan
from helpers.serve import describe_port_holders, listening_pids, port_is_free, process_command, recorded_servers
from helpers.settings import Settings
from helpers.triage_view import label_table

SCHEMA = 1
# (name in versions, module imported, implementation root it should come from)
PACKAGES = (("vllm", "vllm", "vllm"), ("vllm-ascend", "vllm_ascend", "vllm-ascend"), ("torch", "torch", None),
            ("torch-npu", "torch_npu", None), ("transformers", "transformers", None))


def delivery_repo(settings: Settings) -> dict[str, Any]:
    """DELIVERY_REPO, else the current repo when it is a vllm-ascend checkout, else unknown; with
    its branch and dirty files (what `make deliver` would find), so they show before delivery."""
    if settings.delivery_repo is not None:
        found = {"path": str(settings.delivery_repo), "source": "DELIVERY_REPO",
                 "exists": settings.delivery_repo.is_dir()}
    else:
        current = sourcetree.vllm_ascend_checkout(Path.cwd())
        if current is None:
            return {"path": None, "source": None, "exists": False}
        found = {"path": str(current), "source": "the current repo (a vllm-ascend checkout)", "exists": True}
    if found["exists"]:
        info = sourcetree.inspect(Path(found["path"]))
        found.update({"git": info.git, "head": info.head, "branch": info.branch, "dirty": info.dirty[:50],
                      "dirty_count": info.dirty_count})
    return found


def through_pythonpath(where: str | None, pythonpath: str) -> str | None:
    """The PYTHONPATH entry an import location is reached through (the package directory sits
    directly in it), else None: such an import works only while PYTHONPATH is set."""
    if not where:
        return None
    parent = Path(where).parent
    for entry in filter(None, pythonpath.split(os.pathsep)):
        if _inside(str(parent), Path(entry)) and (Path(entry) / Path(where).name).exists():
            return entry
    return None


def _inside(path: str | None, root: Path | None) -> bool | None:
    if not path or root is None:
        return None
    candidate, base = Path(path), Path(root)
    if candidate.exists() and base.exists():
        candidate, base = candidate.resolve(), base.resolve()
    return candidate == base or base in candidate.parents


# --- NPU processes --------------------------------------------------------------------------

def _user_of(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                try:
                    return pwd.getpwuid(uid).pw_name
                except KeyError:
                    return str(uid)
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def _same_process(pid: int, name: str) -> bool:
    """Is /proc/<pid> the process npu-smi names? (npu-smi may show host pids inside a container,
    where the same number can be another process.)"""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip().lower()
    except OSError:
        return False
    wanted = name.lower()
    return bool(wanted) and (comm.startswith(wanted) or wanted.startswith(comm) or wanted in process_command(pid).lower())


def our_server_pids(runs_dir: Path) -> dict[int, dict[str, Any]]:
    """pid -> the state record of our server whose process group it belongs to (verified)."""
    ours: dict[int, dict[str, Any]] = {}
    for _path, record in recorded_servers(runs_dir):
        for pid in record.verified_members():
            ours[pid] = {"server_pid": record.pid, "port": record.port, "run_dir": record.run_dir}
    return ours


def npu_processes(text: str, runs_dir: Path, recorded: bool) -> tuple[list[npu_table.Device], list[dict[str, Any]]]:
    devices = npu_table.parse_devices(text)
    ours = {} if recorded else our_server_pids(runs_dir)
    rows = []
    for proc in npu_table.parse_processes(text, devices):
        row = proc.to_dict()
        local = proc.container_pid or proc.pid
        visible = not recorded and _same_process(local, proc.name)
        row.update({"local_pid": local if visible else None, "user": _user_of(local) if visible else "?",
                    "command": process_command(local)[:200] if visible else proc.name})
        if local in ours and visible:
            row.update({"owner": "ours", **ours[local]})
        else:
            row["owner"] = "other" if visible else ("recorded" if recorded else "not visible here")
        rows.append(row)
    return devices, rows


def describe_holder(row: dict[str, Any]) -> str:
    who = (f"our server pid {row['server_pid']} (port {row['port']}, run {row['run_dir']})" if row["owner"] == "ours"
           else f"pid {row['pid']} ({row['user']}, {row['command'][:80]})")
    return f"{who}, {row['memory_mb']} MB"


def check_npus(facts_box, plan: ServePlan | None, world: int, runs_dir: Path) -> tuple[dict[str, Any], list[str]]:
    text, source = facts_box.npu_smi()
    record: dict[str, Any] = {"source": source, "devices": [], "processes": [], "needed": [], "busy": []}
    if text is None:
        return record, []
    recorded = facts_box.kind == "recorded"
    devices, rows = npu_processes(text, runs_dir, recorded)
    env = plan.process_env(dict(os.environ)) if plan is not None else dict(os.environ)
    visible = env.get("ASCEND_RT_VISIBLE_DEVICES")
    needed, problem = npu_table.needed_devices(world, visible, len(devices))
    record.update({"devices": [vars(d) for d in devices], "processes": rows, "needed": needed, "world": world,
                   "visible_devices": visible})
    problems = [problem] if problem else []
    for index in needed:
        holders = [r for r in rows if r["device"] == index]
        if holders:
            device = devices[index] if index < len(devices) else None
            label = f"NPU {device.npu} chip {device.chip}" if device else f"device {index}"
            record["busy"].append({"device": index, "holders": holders})
            problems.append(f"{label} (device {index}, needed by the plan) is held by "
                            + "; ".join(describe_holder(h) for h in holders))
    return record, problems


# --- the whole context ----------------------------------------------------------------------

def collect(settings: Settings, *, model: Model | None, profile: profiles.Profile | None = None,
            plan: ServePlan | None = None, npus: bool = True, port: bool = True) -> dict[str, Any]:
    """The context record. `problems` are what stops a server from starting (exit 3); warnings
    are what the engineer should know (a root that is not a work tree, vLLM imported elsewhere)."""
    started = time.monotonic()
    profile = profile or profiles.load(settings.backend)
    roots = sourcetree.implementation_roots(settings)
    pending = {name: sourcetree.start_status(path) if path is not None else None for name, path in roots.items()}
    facts_box = profile.facts_box(roots)
    warnings: list[str] = []
    problems: list[str] = []

    npu_record: dict[str, Any] | None = None
    if npus and profile.family == "ascend":
        world = 1
        if plan is not None:
            sizes = npu_table.parallel_size(plan.argv)
            world = sizes["tp"] * sizes["pp"] * sizes["dp"]
        else:
            world = settings.tp or int(profile.defaults.get("tp", 1) or 1)
        npu_record, npu_problems = check_npus(facts_box, plan, world, settings.runs_dir)
        problems += npu_problems
        if not npu_record["devices"] and npu_record["source"] != "npu-smi info":
            warnings.append(f"no NPU table: {npu_record['source']}")

    root_records: dict[str, Any] = {}
    for name, path in roots.items():
        if path is None:
            root_records[name] = {"path": None, "exists": False, "git": False, "setting": sourcetree.ROOT_SETTINGS[name]}
            warnings.append(f"{sourcetree.ROOT_SETTINGS[name]} is not set")
            continue
        info = sourcetree.read_status(path, pending[name])
        root_records[name] = {**info.to_dict(), "setting": sourcetree.ROOT_SETTINGS[name]}
        if not info.git:
            warnings.append(f"{sourcetree.ROOT_SETTINGS[name]}={path}: {info.error}")

    versions = facts_box.versions([name for name, _module, _root in PACKAGES])
    # a recorded box's import paths are not this machine's: this PYTHONPATH says nothing of them
    pythonpath = os.environ.get("PYTHONPATH", "") if facts_box.kind == "live" else ""
    builds = facts_box.builds(versions)  # a source build between releases: placed by its root, else unknown
    packages: dict[str, Any] = {}
    for name, module, root in PACKAGES:
        where = facts_box.imported_from(module)
        entry: dict[str, Any] = {"version": versions.get(name), "module": module, "imported_from": where,
                                 "through_pythonpath": through_pythonpath(where, pythonpath)}
        if name in builds and not builds[name].is_release:
            entry["build"] = builds[name].describe()
        if root is not None:
            entry["from_root"] = _inside(where, roots[root])
            setting = sourcetree.ROOT_SETTINGS[root]
            if where and entry["from_root"] is False:
                warnings.append(f"{module} is imported from {where}, not from {setting}={roots[root]}: changes made "
                                "in the root are not what runs (pip install -e the root, check PYTHONPATH)")
            elif entry["from_root"] and entry["through_pythonpath"]:
                warnings.append(f"{module} reaches {setting}={roots[root]} only through PYTHONPATH "
                                f"({entry['through_pythonpath']}): a shell without it imports another copy "
                                "(pip install -e the root)")
        packages[name] = entry

    model_record: dict[str, Any] = {"requested": settings.model or None, "model_root": str(settings.model_root)}
    if model is not None:
        model_record.update({"name": model.name, "path": str(model.path) if model.path else None,
                             "exists": model.path is not None and model.path.is_dir()})
        if model.path is not None:
            model_record["fingerprint"] = checkpoint_fingerprint(model.path)
        else:
            warnings.append(f"MODEL={settings.model}: no checkpoint directory here (only its evidence)")
    else:
        model_record["exists"] = None
        warnings.append("MODEL is not set: no checkpoint checked")

    delivery = delivery_repo(settings)
    if delivery["path"] is None:
        warnings.append("no delivery repo: set DELIVERY_REPO to the vllm-ascend checkout that gets the commit")
    elif not delivery["exists"]:
        warnings.append(f"DELIVERY_REPO={delivery['path']} does not exist")

    work_dir: dict[str, Any] | None = None
    if plan is not None and plan.cwd:
        work_dir = {"path": plan.cwd, "source": plan.cwd_source, "exists": Path(plan.cwd).is_dir()}
        if plan.work_dir_problem():
            problems.append(plan.work_dir_problem())

    port_record: dict[str, Any] | None = None
    if port:
        free = port_is_free(settings.host, settings.port)
        port_record = {"host": settings.host, "port": settings.port, "free": free}
        if not free:
            ours = our_server_pids(settings.runs_dir)
            holders = listening_pids(settings.port)
            port_record["holders"] = describe_port_holders(settings.port)
            if holders and all(pid in ours for pid in holders):
                port_record["ours"] = True
                warnings.append(f"port {settings.port} is held by our own server: `make hygiene` stops it")
            else:
                problems.append(f"port {settings.port} is in use by {port_record['holders']}; not ours, left untouched")

    return {
        "schema": SCHEMA,
        "generated_at": ev.utc_iso(),
        "backend": profile.name,
        "box": facts_box.kind,
        "model": model_record,
        "roots": root_records,
        "delivery_repo": delivery,
        "work_dir": work_dir,
        "pythonpath": pythonpath or None,
        "packages": packages,
        "versions": versions,
        "npus": npu_record,
        "port": port_record,
        "warnings": warnings,
        "problems": problems,
        "verdict": "FAIL" if problems else "PASS",
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def context_path(settings: Settings, model: Model | None) -> Path:
    return (model.runs_dir if model is not None else Path(settings.runs_dir)) / "context.json"


def write(record: dict[str, Any], path: Path) -> None:
    ev.atomic_write_json(path, record)


def preflight(settings: Settings, model: Model, profile: profiles.Profile, plan: ServePlan,
              npus: bool = True) -> dict[str, Any]:
    """The context at the start of a stage run: recorded in its evidence; a needed NPU held by
    another process stops the run before anything starts (exit 3, one line). The port is
    checked by the stage itself. npus=False: the run shares a live server of ours (its NPUs)."""
    record = collect(settings, model=model, profile=profile, plan=plan, port=False, npus=npus)
    write(record, context_path(settings, model))
    if record["problems"]:
        raise EnvironmentProblem(record["problems"][0], hint_for(record))
    return record


def hint_for(record: dict[str, Any]) -> str:
    busy = (record.get("npus") or {}).get("busy") or []
    if any(h["owner"] == "ours" for b in busy for h in b["holders"]):
        return "stop our earlier server with `make hygiene` (by its recorded pid), then rerun"
    if busy:
        devices = (record.get("npus") or {}).get("devices") or []
        held = {h["device"] for h in (record.get("npus") or {}).get("processes") or []}
        free = [str(d["index"]) for d in devices if d["index"] not in held]
        return ("not ours: left untouched; ask its owner, or pick free NPUs with ASCEND_RT_VISIBLE_DEVICES"
                + (f" (free: {','.join(free)})" if free else ""))
    return "see context.json"


# --- the terminal table ---------------------------------------------------------------------

def render_table(record: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    model = record["model"]
    if model.get("path"):
        rows.append(("模型", "model", f"{model['path']}" + ("" if model.get("exists") else "  (missing)")))
    else:
        rows.append(("模型", "model", f"{model.get('requested') or 'MODEL not set'} (MODEL_ROOT {model['model_root']})"))
    for name, root in record["roots"].items():
        if root.get("git"):
            state = (f"HEAD {str(root['head'])[:12]} ({root['branch'] or 'detached'}), "
                     f"{root['dirty_count']} dirty file(s)")
        else:
            state = root.get("error") or "not set"
        rows.append(("实现根目录", root["setting"], f"{root['path']}  {state}"))
    delivery = record["delivery_repo"]
    state = ""
    if delivery.get("git"):
        state = f"  {delivery['branch'] or 'detached'}, {delivery['dirty_count']} dirty file(s)"
    rows.append(("交付仓库", "DELIVERY_REPO", f"{delivery['path']} ({delivery['source']}){state}" if delivery["path"]
                 else "unknown"))
    work_dir = record.get("work_dir")
    if work_dir:
        rows.append(("工作目录", "WORK_DIR", f"{work_dir['path']} ({work_dir['source']})"
                     + ("" if work_dir["exists"] else "  (missing)")))
    for name, entry in record["packages"].items():
        where = entry["imported_from"] or ("not recorded" if record["box"] == "recorded" else "not importable")
        mark = {True: "  (from the root)", False: "  (NOT from the root)"}.get(entry.get("from_root"), "")
        if entry.get("through_pythonpath"):
            mark += f"  (through PYTHONPATH {entry['through_pythonpath']})"
        shown = entry.get("build") or entry["version"] or "-"
        rows.append(("版本", entry["module"], f"{shown}  {where}{mark}"))
    npus = record.get("npus")
    if npus is not None:
        summary = f"{len(npus['devices'])} device(s) ({npus['source']}); the plan needs {npus['needed'] or '-'}"
        rows.append(("NPU", "npus", summary))
        for proc in npus["processes"]:
            rows.append(("NPU 进程", f"device {proc['device']}", f"pid {proc['pid']} {proc['user']} "
                         f"{proc['command'][:60]} {proc['memory_mb']} MB [{proc['owner']}]"))
    port = record.get("port")
    if port is not None:
        rows.append(("端口", "port", f"{port['port']} on {port['host']} " + (
            "free" if port["free"] else f"in use by {port.get('holders')}")))
    lines = [f"context ({record['backend']}, {record['box']} box, {record['elapsed_s']} s)"] + label_table(rows)
    lines += [f"警告 warning: {w}" for w in record["warnings"]]
    lines += [f"问题 problem: {p}" for p in record["problems"]]
    return "\n".join(lines)


def summary_line(record: dict[str, Any]) -> str:
    """One line for the start of triage / a stage."""
    parts = []
    for name, root in record["roots"].items():
        if root.get("git"):
            parts.append(f"{name} {str(root['head'])[:8]}{'+' + str(root['dirty_count']) if root['dirty_count'] else ''}")
    parts += [f"{e['module']} {e['version']}" for e in record["packages"].values() if e["version"]]
    text = "context: " + ", ".join(parts) if parts else "context: no roots, no packages"
    if record["warnings"]:
        text += f"; {len(record['warnings'])} warning(s) (make context)"
    return text
