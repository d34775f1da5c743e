"""Fewer, parallel starts (helpers/starts): NPU groups never overlap and never use a held NPU,
each run of a set has its own port and HCCL port range; two commands that differ only in where
they ran are the same command. The npu-smi text is the recorded 8 x 910B3 machine of
helpers/replay/machines.yaml (vllm-ascend#3024), with one process row (its form from
vllm-ascend#5606) put on NPU 2."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from conftest import REPO
from helpers import settings
from helpers.plan import ServePlan
from helpers.starts import groups, reuse

MACHINE = yaml.safe_load((REPO / "helpers/replay/machines.yaml").read_text())["machines"]["a2-910b3-x8"]["npu_smi"]
HELD_ROW = "| 2       0                 | 19334         | VLLMWorker_TP            | 58472                   |"


@dataclass
class RecordedBox:
    text: str
    kind: str = "recorded"

    def npu_smi(self):
        return self.text, "recorded npu-smi info"


@dataclass
class AscendProfile:
    box: RecordedBox
    name: str = "replay"
    family: str = "ascend"

    def facts_box(self, *_roots):
        return self.box


def busy_machine() -> str:
    lines = MACHINE.splitlines()
    index = next(i for i, line in enumerate(lines) if "No running processes found in NPU 2" in line)
    lines[index] = HELD_ROW
    return "\n".join(lines)


def slots(tmp_path, world: int, wanted: int, text: str = MACHINE, **values: str) -> groups.SlotPlan:
    loaded = settings.load({"RUNS_DIR": str(tmp_path), "PORT": "18600", **values})
    return groups.plan_slots(loaded, AscendProfile(RecordedBox(text)), world, wanted)  # type: ignore[arg-type]


def test_groups_are_disjoint_free_npus_each_with_its_own_port_and_hccl_range(tmp_path):
    plan = slots(tmp_path, world=2, wanted=4, text=busy_machine())
    assert [s.npus for s in plan.slots] == [[0, 1], [3, 4], [5, 6]]  # NPU 2 is held: never used, 7 left over
    assert "held: [2]" in plan.why
    assert len({s.port for s in plan.slots}) == 3 and plan.slots[0].port == 18600
    bases = sorted(s.hccl_base_port for s in plan.slots)
    assert bases[0] >= 60032 and all(b - a >= 32 for a, b in zip(bases, bases[1:]))  # never the default range
    env = plan.slots[1].env()
    assert env == {"PORT": str(plan.slots[1].port), "NPU_GROUP": "3,4", "HCCL_BASE_PORT": str(plan.slots[1].hccl_base_port)}


def test_one_group_or_parallel_1_runs_one_at_a_time_as_before(tmp_path):
    assert not slots(tmp_path, world=8, wanted=2).parallel  # TP 8 on 8 NPUs: one copy fits
    assert not slots(tmp_path, world=8, wanted=2, text=busy_machine()).parallel  # 7 free: not even one spare
    single = slots(tmp_path, world=2, wanted=3, PARALLEL="1")
    assert not single.parallel and single.slots[0].npus is None  # as today: the box's own devices
    assert len(slots(tmp_path, world=2, wanted=3, PARALLEL="2").slots) == 2


def test_a_run_on_an_npu_group_writes_its_devices_and_hccl_range_into_the_command(tmp_path):
    from helpers.plan import plan_for
    from helpers import profiles
    from helpers.model import resolve
    from conftest import tiny_shaped

    checkpoint = tiny_shaped(tmp_path / "m", "qwen3-dense")
    loaded = settings.load({"RUNS_DIR": str(tmp_path), "MODEL": str(checkpoint), "BACKEND": "cpu",
                            "NPU_GROUP": "4,5", "HCCL_BASE_PORT": "60064"})
    plan = plan_for(profiles.load("cpu"), loaded, resolve(loaded), "b")
    assert plan.env["ASCEND_RT_VISIBLE_DEVICES"] == "4,5" and plan.env["HCCL_IF_BASE_PORT"] == "60064"
    assert "export ASCEND_RT_VISIBLE_DEVICES=4,5" in plan.command_sh("x")


def _plan(argv: list[str], env: dict[str, str]) -> ServePlan:
    return ServePlan(argv=argv, env=env, cwd="", served_name="m", host="127.0.0.1", port=1)


def test_the_same_command_apart_from_where_it_ran_is_the_same_command():
    recorded = {"argv": ["vllm", "serve", "/m", "--port", "8000", "--enable-expert-parallel"],
                "env": {"A": "1", "ASCEND_RT_VISIBLE_DEVICES": "0,1", "HCCL_IF_BASE_PORT": "60032"}}
    same = _plan(["vllm", "serve", "/m", "--port", "8001", "--enable-expert-parallel"],
                 {"A": "1", "ASCEND_RT_VISIBLE_DEVICES": "2,3"})
    assert reuse.command_differences(recorded, same) == []
    other = _plan(["vllm", "serve", "/m", "--port", "8000"], {"A": "2"})
    why = reuse.command_differences(recorded, other)
    assert "drops ['--enable-expert-parallel']" in why[0] and why[1] == "env differs (A)"
