"""Serve plan: backend profile + settings + stage + feature variant -> argv, env and cwd.

Pure: no process is started here. The plan prints as a shell line and as command.sh, the file
that reproduces a run exactly (secrets are referenced, never written).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers.errors import UsageError
from helpers.model import Model
from helpers.profiles import Profile
from helpers.settings import REPO_ROOT, Settings

SECRET_ENV = ("VLLM_API_KEY",)


@dataclass
class Variant:
    """What a step adds to the base serve command (a feature gate or a ladder rung)."""

    name: str = "base"
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    skip_requests: list[str] = field(default_factory=list)  # smoke requests the switch rules out

    @classmethod
    def of_record(cls, data: dict) -> "Variant":
        """The variant a recorded run (evidence.json) served with: capacity and accuracy serve
        like the documented run."""
        recorded = data.get("variant") or {}
        return cls(str(recorded.get("name") or "base"), list(recorded.get("flags") or []),
                   dict(recorded.get("env") or {}))


@dataclass
class ServePlan:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    served_name: str
    host: str
    port: int
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    unset_env: list[str] = field(default_factory=list)
    cwd_source: str = ""   # WORK_DIR, or the profile whose workdir it is

    def work_dir_problem(self) -> str:
        """One line when the directory to serve from is missing ("" when it is there or unset):
        the workflow serves from /workspace, and a server silently started elsewhere would not."""
        if not self.cwd or Path(self.cwd).is_dir():
            return ""
        return (f"{self.cwd_source}={self.cwd} does not exist: create it (the workflow serves from it) "
                "or set WORK_DIR to an existing directory")

    def process_env(self, base: dict[str, str]) -> dict[str, str]:
        merged = dict(base)
        merged.update(self.env)
        merged.update(self.secret_env)
        for key in self.unset_env:
            merged.pop(key, None)
        return merged

    def shell_line(self) -> str:
        """One line, as the workflow writes it: `K=V ... vllm serve ...` (no cd, no secrets)."""
        unset = ["env"] + [f"-u {shlex.quote(k)}" for k in self.unset_env] if self.unset_env else []
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join(unset + env + [shlex.quote(a) for a in self.argv])

    def command_sh(self, header: str) -> str:
        lines = ["#!/usr/bin/env bash"]
        lines += [f"# {h}" for h in header.splitlines()]
        lines += ["set -euo pipefail"]
        if self.cwd:
            lines.append(f"cd {shlex.quote(self.cwd)}")
        for key in self.unset_env:
            lines.append(f"unset {key}")
        for key, value in self.env.items():
            lines.append(f"export {key}={shlex.quote(value)}")
        for key in self.secret_env:
            lines.append(f'export {key}="${{{key}:?export {key} first; it is not recorded on purpose}}"')
        lines.append("exec " + " \\\n  ".join(group_flags(self.argv)))
        return "\n".join(lines) + "\n"


def group_flags(argv: list[str]) -> list[str]:
    """Quote argv and put each --flag with its values on one line (readable command.sh)."""
    groups: list[list[str]] = []
    for index, arg in enumerate(argv):
        starts_flag = arg.startswith("--")
        if not groups or (starts_flag and index > 0):
            groups.append([])
        groups[-1].append(shlex.quote(arg))
    return [" ".join(g) for g in groups]


def split_extra_args(text: str) -> list[str]:
    try:
        return shlex.split(text or "")
    except ValueError as exc:
        raise UsageError(f"EXTRA_ARGS cannot be split like a shell would: {exc}", "balance the quotes") from None


def build_plan(
    profile: Profile,
    *,
    model_path: str,
    served_name: str,
    stage: str,
    host: str,
    port: int,
    tp: int | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = None,
    dtype: str = "",
    extra_args: str = "",
    api_key: str = "",
    work_dir: str = "",
    variant: Variant | None = None,
    python: str | None = None,
) -> ServePlan:
    variant = variant or Variant()
    defaults = profile.defaults
    substitutions = {"model": model_path, "python": python or sys.executable, "repo": str(REPO_ROOT)}
    argv = [part.format(**substitutions) for part in profile.launcher]
    argv += ["--served-model-name", served_name]
    argv += list(profile.flags)
    argv += ["--dtype", dtype or str(defaults.get("dtype", "auto"))]
    # unchosen (no settings, no defaults.choose): the profile's length, else its serve template's
    length = max_model_len or defaults.get("max_model_len") or defaults.get("max_model_len_from_template") or 4096
    argv += ["--max-model-len", str(length)]
    argv += ["--tensor-parallel-size", str(tp or defaults.get("tp", 1))]
    argv += ["--max-num-seqs", str(max_num_seqs or defaults.get("max_num_seqs", 16))]
    if gpu_memory_utilization:  # the KV cache is sized from this budget, not from max-model-len
        argv += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if stage == "a":
        argv += ["--load-format", "dummy"]
    argv += ["--host", host, "--port", str(port)]
    argv += list(variant.flags)
    argv += split_extra_args(extra_args)
    env = dict(profile.env)
    env.update(variant.env)
    unset_env: list[str] = []
    for flag, names in profile.env_unset_by_flag.items():
        if any(arg == flag or arg.startswith(flag + "=") for arg in argv):
            for name in names:
                env.pop(name, None)
                if name not in unset_env:
                    unset_env.append(name)
    # kept as asked even when missing: the start refuses it (work_dir_problem), never drops it
    cwd = work_dir or profile.workdir
    cwd_source = "WORK_DIR" if work_dir else f"the {profile.name} profile's workdir"
    secret_env = {"VLLM_API_KEY": api_key} if api_key else {}
    return ServePlan(argv=argv, env=env, cwd=cwd, served_name=served_name, host=host, port=port,
                     secret_env=secret_env, unset_env=unset_env, cwd_source=cwd_source)


def mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def plan_for(profile: Profile, settings: Settings, model: Model, stage: str, variant: Variant | None = None,
             *, max_model_len: int | None = None, max_num_seqs: int | None = None,
             tp: int | None = None) -> ServePlan:
    """The serve plan of a step from the settings (a capacity cell overrides the two sizes; the
    stage run passes the TP and length its profile's defaults chose when the settings leave them unset)."""
    plan = build_plan(
        profile, model_path=str(model.checkpoint), served_name=model.served_name, stage=stage,
        host=settings.host, port=settings.port, tp=tp or settings.tp,
        max_model_len=max_model_len or settings.max_model_len, max_num_seqs=max_num_seqs or settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        dtype=settings.dtype, extra_args=settings.extra_args, api_key=settings.api_key,
        work_dir=settings.work_dir, variant=variant,
    )
    # a run of a parallel set (or NPU_GROUP / HCCL_BASE_PORT set by hand): its NPUs and HCCL host
    # port range are part of the command, so command.sh reproduces the run where it ran
    if settings.npu_group:
        plan.env["ASCEND_RT_VISIBLE_DEVICES"] = settings.npu_group
    if settings.hccl_base_port:
        plan.env["HCCL_IF_BASE_PORT"] = str(settings.hccl_base_port)
    return plan
