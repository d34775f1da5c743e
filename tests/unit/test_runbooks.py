"""The Chinese runbooks (runbooks/*.md) stay true to the code.

A person copies these commands on an Ascend box, often without the toolkit. So every fenced shell
block must parse, every `make` target / variable and every `python -m helpers` subcommand and
option it names must exist, the plain-shell serve commands must equal what the ascend profile
builds (golden blocks, marked `<!-- golden: NAME [key=value ...] -->` right before the fence), and
the failure-signature quick reference must be a fresh render of helpers/signatures.yaml.
A change to the code that is not reflected in the runbooks fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pytest
import yaml

from helpers import defaults, profiles, render_signatures
from helpers import gates
from helpers.cli import cli
from helpers.catalog import load_catalog
from helpers.plan import Variant, build_plan, split_extra_args

REPO = Path(__file__).resolve().parents[2]
RUNBOOKS = REPO / "runbooks"
# README.zh.md is checked like a runbook (targets, variables, helpers, shell blocks).
STEP_FILES = ["00-env-hygiene.md", "01-triage.md", "02-stage-a.md", "03-stage-b.md", "04-feature-gates.md",
              "05-fallback-ladder.md", "06-capacity.md", "07-accuracy.md", "08-delivery.md"]
STEP_FILES += ["00-context.md", "01-code-changes.md"]  # issue 14: context and the model's code changes
STEP_FILES += ["01-new-architecture.md"]  # issue 20: a new architecture (scaffold, keymap)
STEP_SECTIONS = ["## 目的", "## make 命令", "## 等价的纯 shell", "## PASS 的样子", "## 常见失败"]
SHELL_LANGS = {"bash", "sh", "shell"}
# Make variables that are not in env.example on purpose (set by the Makefile itself).
EXTRA_MAKE_VARS = {"VENV"}
# Environment variables a runbook may put in front of `make` (VAR=x make ...): they reach the
# server through the environment (Ascend runtime / torch / vLLM knobs, not toolkit settings).
SERVER_ENV_PREFIXES = {"TORCHDYNAMO_DISABLE", "HCCL_OP_EXPANSION_MODE", "PYTORCH_NPU_ALLOC_CONF",
                       "VLLM_ALLOW_LONG_MAX_MODEL_LEN", "HCCL_IF_BASE_PORT", "HCCL_BUFFSIZE",
                       "ASCEND_RT_VISIBLE_DEVICES"}
# The example values every runbook states (runbooks/README.md).
EXAMPLE = {"model": "/models/Qwen3-8B", "tp": "8", "max_num_seqs": "",
           "stage": "b", "host": "127.0.0.1", "port": "8000"}
# MAX_MODEL_LEN is not an example value: unset, the serve template's length capped by the model's
# max_position_embeddings (helpers/defaults.py); these are the example models' config.json values.
MAX_POSITIONS = {"Qwen3-8B": 40960, "Qwen3-30B-A3B": 40960, "Qwen2.5-VL-7B-Instruct": 128000, "DeepSeek-V3": 163840}
# Golden blocks that must exist: removing one from the runbooks fails the test.
REQUIRED_GOLDEN = {"stage-a", "stage-b", "eager", "dynamo-fallback", "text-only", "ep", "reduced-layers", "xlite"}
# The layer override the runbooks show for a reduced-layers smoke run.
REDUCTION = '{"num_hidden_layers":2}'
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
GOLDEN_MARK = re.compile(r"<!--\s*golden:\s*(?P<name>[\w-]+)(?P<attrs>(?:\s+[\w]+=\S+)*)\s*-->\s*$")
INLINE_CODE = re.compile(r"(?P<fence>`+)(?P<code>.+?)(?P=fence)")
SERVE_SUFFIX = re.compile(r"\s*>\s*\S+\s+2>&1\s*&\s*$")
ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=")
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "{", "}", "!", "then", "do", "else", "if", "while"}


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    body: str
    golden: str | None
    golden_attrs: dict[str, str]

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def runbook_files() -> list[Path]:
    """Every file a person copies commands from: runbooks/*.md and the Chinese README."""
    return sorted(RUNBOOKS.glob("*.md")) + [REPO / "README.zh.md"]


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").splitlines()
        mark = GOLDEN_MARK.search(before[-1]) if before else None
        attrs = dict(a.split("=", 1) for a in mark.group("attrs").split()) if mark else {}
        found.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group("lang"), match.group("body"),
                           mark.group("name") if mark else None, attrs))
    return found


def all_blocks() -> list[Block]:
    return [b for path in runbook_files() for b in blocks_of(path)]


def shell_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in SHELL_LANGS]


def prose_of(path: Path) -> str:
    """The text outside fenced blocks (where inline `code` spans live)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def logical_lines(body: str) -> list[str]:
    return [line for line in re.sub(r"\\\n\s*", " ", body).splitlines() if line.strip()]


def tokens_of(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:
        return []  # heredoc bodies (Python) and the like: not shell command lines


@dataclass
class MakeCall:
    where: str
    text: str
    prefix_vars: list[str]
    targets: list[str]
    make_vars: list[str]


def make_calls_in(line: str, where: str) -> list[MakeCall]:
    calls: list[MakeCall] = []
    tokens = tokens_of(line)
    at_command_start = True
    prefix: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in OPERATORS:
            at_command_start, prefix = True, []
        elif at_command_start and ASSIGNMENT.match(token):
            prefix.append(ASSIGNMENT.match(token).group("name"))
        elif at_command_start and token == "make":
            rest: list[str] = []
            index += 1
            while index < len(tokens) and tokens[index] not in OPERATORS:
                rest.append(tokens[index])
                index += 1
            calls.append(MakeCall(where, line.strip(), prefix,
                                  [t for t in rest if not t.startswith("-") and not ASSIGNMENT.match(t)],
                                  [ASSIGNMENT.match(t).group("name") for t in rest if ASSIGNMENT.match(t)]))
            at_command_start, prefix = True, []
            continue
        else:
            at_command_start, prefix = False, []
        index += 1
    return calls


def all_make_calls() -> list[MakeCall]:
    calls: list[MakeCall] = []
    for block in shell_blocks():
        for line in logical_lines(block.body):
            calls += make_calls_in(line, block.where())
    for path in runbook_files():
        for span in INLINE_CODE.finditer(prose_of(path)):
            calls += make_calls_in(span.group("code").strip(), f"{path.relative_to(REPO)} (inline)")
    return calls


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z0-9][a-z0-9-]*):(?!=)", text, re.M))


def env_example_vars() -> set[str]:
    text = (REPO / "env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Z][A-Z0-9_]*) *\?=", text, re.M))


# --- structure ---------------------------------------------------------------------------------
def test_every_step_has_a_file_with_the_five_parts_and_the_index_links_it():
    index = (RUNBOOKS / "README.md").read_text(encoding="utf-8")
    for name in STEP_FILES + ["signatures.zh.md"]:
        assert (RUNBOOKS / name).is_file(), f"runbooks/{name} is missing"
        assert f"]({name})" in index, f"runbooks/README.md does not link {name}"
    for name in STEP_FILES:
        text = (RUNBOOKS / name).read_text(encoding="utf-8")
        missing = [s for s in STEP_SECTIONS if s not in text]
        assert not missing, f"runbooks/{name} lacks sections {missing}"
        assert any(b.lang in SHELL_LANGS for b in blocks_of(RUNBOOKS / name)), f"runbooks/{name} has no shell block"


def test_no_runbook_tells_anyone_to_kill_by_name():
    for block in shell_blocks():
        for line in logical_lines(block.body):
            words = tokens_of(line)
            assert "pkill" not in words and "killall" not in words, f"{block.where()}: kills by name: {line}"


# --- shell blocks --------------------------------------------------------------------------------
@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: b.where())
def test_shell_block_parses(block: Block):
    result = subprocess.run(["bash", "-n"], input=block.body, text=True, capture_output=True, timeout=30)
    assert result.returncode == 0, f"{block.where()}: bash -n failed:\n{result.stderr}"


def test_the_parser_finds_make_calls_in_blocks_and_inline_code():
    """Guards the checks below against silently checking nothing."""
    calls = all_make_calls()
    assert any(c.targets == ["stage-a"] and "MODEL" in c.make_vars for c in calls)
    assert any("HCCL_OP_EXPANSION_MODE" in c.prefix_vars for c in calls)  # from the generated reference
    assert make_calls_in("A=1 make x B=2 -n && make y", "t")[1].targets == ["y"]
    assert make_calls_in("echo make x", "t") == []


def test_every_make_target_named_exists():
    targets = makefile_targets()
    missing = sorted({f"{t} ({c.where})" for c in all_make_calls() for t in c.targets if t not in targets})
    assert not missing, "runbooks name make targets the Makefile does not have:\n  " + "\n  ".join(missing)


def test_every_make_variable_named_is_documented_in_env_example():
    known = env_example_vars()
    bad = sorted({f"{v} ({c.where}: {c.text})" for c in all_make_calls() for v in c.make_vars
                  if v not in known | EXTRA_MAKE_VARS})
    bad += sorted({f"{v} ({c.where}: {c.text})" for c in all_make_calls() for v in c.prefix_vars
                   if v not in known | EXTRA_MAKE_VARS | SERVER_ENV_PREFIXES})
    assert not bad, "runbooks use variables env.example does not document:\n  " + "\n  ".join(bad)


def helper_calls() -> list[tuple[str, list[str]]]:
    calls = []
    for block in shell_blocks():
        for line in logical_lines(block.body):
            tokens = tokens_of(line)
            for i in range(len(tokens) - 2):
                if tokens[i] == "-m" and tokens[i + 1] == "helpers":
                    rest = []
                    for token in tokens[i + 2:]:
                        if token in OPERATORS:
                            break
                        rest.append(token)
                    calls.append((block.where(), rest))
    for path in runbook_files():
        for match in re.finditer(r"-m helpers\s+([a-z][\w-]*)((?:\s+--[\w-]+)*)", path.read_text(encoding="utf-8")):
            calls.append((str(path.relative_to(REPO)), [match.group(1)] + match.group(2).split()))
    return calls


def test_every_helper_subcommand_and_option_named_exists():
    calls = helper_calls()
    assert calls, "no `python -m helpers` call found: the parser is broken"
    problems = []
    for where, args in calls:
        command = cli.commands.get(args[0]) if args else None
        if command is None:
            problems.append(f"{where}: no helper subcommand {args[:1]}")
            continue
        options = {o for p in command.params for o in p.opts + p.secondary_opts}
        problems += [f"{where}: `{args[0]}` has no option {a}" for a in args[1:]
                     if a.startswith("--") and a.split("=", 1)[0] not in options]
    assert not problems, "\n".join(problems)


# --- golden serve lines ----------------------------------------------------------------------------
def feature_rules() -> dict[str, dict]:
    data = yaml.safe_load((REPO / "helpers" / "features.yaml").read_text(encoding="utf-8"))
    return {f["id"]: f for f in data["features"]}


def golden_variant(name: str) -> tuple[str, Variant]:
    """(stage, variant) for a golden block name; flags/env come from the feature rules (data)."""
    rules = feature_rules()
    if name == "stage-a":
        return "a", Variant()
    if name in ("stage-b", "capacity"):
        return "b", Variant()
    if name in ("eager", "dynamo-fallback", "text-only"):
        spec = gates.load_specs()[name]  # what `make <name>` itself adds
        return "b", Variant(name, list(spec.flags), dict(spec.env))
    if name == "ep":
        return "b", Variant(name, list(rules["ep"]["flags"]))
    if name == "reduced-layers":  # what EXTRA_ARGS adds for a layer-reduced smoke run
        return "b", Variant(name, split_extra_args(f"--hf-overrides '{REDUCTION}'"))
    if name == "xlite":
        return "b", Variant(name, list(rules["xlite"]["flags"]))
    if name == "mtp":
        flags = [Template(f).substitute(mtp_config_layers=1) for f in rules["mtp"]["flags"]]
        return "b", Variant(name, flags)
    if name == "flashcomm1-env":
        version = next(v for v in rules["flashcomm1"]["versions"] if v["mode"] == "env")
        return "b", Variant(name, list(rules["ep"]["flags"]) + list(version["flags"]), dict(version["env"]))
    raise AssertionError(f"unknown golden block name {name!r}: teach golden_variant() what it builds")


def expected_serve_line(block: Block) -> str:
    values = {**EXAMPLE, **block.golden_attrs}
    stage, variant = golden_variant(block.golden or "")
    stage = block.golden_attrs.get("stage", stage)
    model = values["model"]
    profile = profiles.load("ascend")
    length = values.get("max_model_len") or defaults.serve_template_length(
        int(profile.defaults["max_model_len_from_template"]), MAX_POSITIONS[Path(model).name])
    plan = build_plan(profile, model_path=model, served_name=values.get("name", Path(model).name),
                      stage=stage, host=values["host"], port=int(values["port"]), tp=int(values["tp"]),
                      max_model_len=int(length),
                      max_num_seqs=int(values["max_num_seqs"]) if values["max_num_seqs"] else None,
                      variant=variant)
    return plan.shell_line()


def golden_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.golden]


def test_required_golden_blocks_exist():
    names = {b.golden for b in golden_blocks()}
    assert REQUIRED_GOLDEN <= names, f"golden serve blocks missing from runbooks/: {sorted(REQUIRED_GOLDEN - names)}"


def test_every_plain_serve_command_is_a_golden_block():
    for block in shell_blocks():
        if any("vllm serve" in line for line in logical_lines(block.body)):
            assert block.golden, f"{block.where()}: a serve command without a `<!-- golden: NAME -->` mark"


@pytest.mark.parametrize("block", golden_blocks(), ids=lambda b: f"{b.golden}@{b.where()}")
def test_golden_serve_line_equals_the_ascend_plan(block: Block):
    serve = [line for line in logical_lines(block.body) if "vllm serve" in line]
    assert len(serve) == 1, f"{block.where()}: a golden block holds exactly one serve command, found {len(serve)}"
    written = SERVE_SUFFIX.sub("", " ".join(serve[0].split()))
    assert written == expected_serve_line(block), (
        f"{block.where()} ({block.golden}): the runbook's serve command differs from the ascend profile's;"
        " update the runbook (or the profile) so they agree")


def test_the_documents_state_the_max_length_default_the_code_uses():
    """Unset MAX_MODEL_LEN on ascend is the serve template's length capped by max_position_embeddings
    (defaults.py): the runbooks' example table, env.example and both READMEs say that number, and
    the profile carries no other ascend length that a reader could take for the default."""
    profile = profiles.load("ascend")
    template = str(profile.defaults["max_model_len_from_template"])
    assert "max_model_len" not in profile.defaults, "an unused ascend default length misleads the documents"
    row = next(line for line in (RUNBOOKS / "README.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| `MAX_MODEL_LEN`"))
    assert template in row and "max_position_embeddings" in row
    for name, length in MAX_POSITIONS.items():
        capped = defaults.serve_template_length(int(template), length)
        assert f"{name}" in row and str(capped) in row, f"runbooks/README.md: {name} serves at {capped}"
    env_block = (REPO / "env.example").read_text(encoding="utf-8").split("MAX_MODEL_LEN ?=")[0].rsplit("?=", 1)[1]
    assert template in env_block and "max_position_embeddings" in env_block
    for readme in ("README.md", "README.zh.md"):
        text = (REPO / readme).read_text(encoding="utf-8")
        assert template in text and "32768" not in text, readme
    for path in runbook_files():
        assert "--max-model-len 32768" not in path.read_text(encoding="utf-8"), path.name


def test_the_capacity_load_is_the_one_the_toolkit_sends():
    """The plain-shell load of runbooks/06-capacity.md is loadgen's own `vllm bench serve` argv for
    the golden cell (16 concurrent requests at the golden length, the profile's output length)."""
    from helpers import loadgen

    golden = next(b for b in golden_blocks() if b.golden == "capacity")
    length = int(golden.golden_attrs["max_model_len"])
    output_len = int(profiles.load("ascend").capacity["output_len"])
    bench = next(line for b in shell_blocks() if b.path.name == "06-capacity.md"
                 for line in logical_lines(b.body) if line.startswith("vllm bench serve"))
    expected = loadgen.bench_serve_argv(url="http://127.0.0.1:8000", model_path=EXAMPLE["model"], served_name="Qwen3-8B",
                                        input_len=length - output_len, output_len=output_len, num_prompts=16,
                                        concurrency=16,
                                        result_dir=".", result_filename="bench-serve.json", trust_remote_code=True)
    assert bench.split() == expected


def test_golden_comparison_notices_a_changed_flag():
    block = next(b for b in golden_blocks() if b.golden == "stage-b")
    wrong = block.body.replace("--max-num-seqs 16", "--max-num-seqs 32")
    line = SERVE_SUFFIX.sub("", " ".join(next(l for l in logical_lines(wrong) if "vllm serve" in l).split()))
    assert line != expected_serve_line(block)


# --- the generated quick reference -----------------------------------------------------------------
def test_signature_reference_is_a_fresh_render_of_the_catalog():
    committed = (RUNBOOKS / "signatures.zh.md").read_text(encoding="utf-8")
    assert committed == render_signatures.render(), "runbooks/signatures.zh.md is stale: run `make runbooks`"


def test_signature_reference_lists_every_signature_with_its_chinese_hint():
    text = (RUNBOOKS / "signatures.zh.md").read_text(encoding="utf-8")
    for sig in load_catalog().signatures:
        assert f"### `{sig.id}`" in text
        assert sig.hint_zh in text


def test_signatures_doc_check_fails_on_a_stale_file(tmp_path: Path):
    from click.testing import CliRunner

    stale = tmp_path / "signatures.zh.md"
    stale.write_text("old\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["signatures-doc", "--check", "--out", str(stale)])
    assert result.exit_code == 1 and "make runbooks" in result.output
    assert runner.invoke(cli, ["signatures-doc", "--out", str(stale)]).exit_code == 0
    assert runner.invoke(cli, ["signatures-doc", "--check", "--out", str(stale)]).exit_code == 0


def test_signature_ids_named_in_runbook_tables_exist():
    ids = {s.id for s in load_catalog().signatures}
    unknown = []
    for name in STEP_FILES:
        header: list[str] | None = None
        for line in (RUNBOOKS / name).read_text(encoding="utf-8").splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                continue
            if "特征" not in header or set(line) <= set("|-: "):
                continue
            cell = cells[header.index("特征")]
            for span in INLINE_CODE.finditer(cell):
                code = span.group("code")
                if re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)+", code) and code not in ids:
                    unknown.append(f"{name}: {code}")
    assert not unknown, f"runbooks name signature ids the catalog does not have: {unknown}"


def test_chinese_readme_lists_every_documented_make_target():
    text = (REPO / "README.zh.md").read_text(encoding="utf-8")
    documented = re.findall(r"^([a-z0-9][a-z0-9-]*):.*## ", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    missing = [t for t in documented if f"`make {t}`" not in text]
    assert not missing, f"README.zh.md's targets table lacks: {missing}"


def test_both_readmes_quote_the_same_bench_numbers():
    english = (REPO / "README.md").read_text(encoding="utf-8")
    measured = english[english.index("## Measured"):]
    numbers = set(re.findall(r"\d+(?:\.\d+)? (?:s|MB/s|MB)\b", measured))
    assert len(numbers) >= 8, "README.md lost its measured numbers"
    chinese = (REPO / "README.zh.md").read_text(encoding="utf-8")
    assert not [n for n in numbers if n not in chinese], "README.zh.md quotes other bench numbers than README.md"


def test_plain_shell_uses_only_what_the_official_image_has():
    """The official image has no ss, netstat or lsof: ports are read from /proc (as helpers/serve.py does)."""
    missing_tools = {"ss", "netstat", "lsof", "fuser"}
    for block in shell_blocks():
        for line in logical_lines(block.body):
            used = missing_tools & set(tokens_of(line))
            assert not used, f"{block.where()}: {sorted(used)} is not in the official image: {line}"


def test_the_plain_shell_port_check_names_the_holder(tmp_path):
    import os
    import socket

    block = next(b for b in blocks_of(RUNBOOKS / "00-env-hygiene.md") if "/proc/net/tcp" in b.body)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        script = block.body.replace("PORT=8000", f"PORT={port}", 1)
        held = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert f"port {port}: pid {os.getpid()} " in held.stdout, held.stdout + held.stderr
    free = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert free.stdout.strip() == f"port {port}: free"


def test_stage_b_real_weight_evidence_is_what_the_toolkit_records():
    """runbooks/03-stage-b.md proves real weights by the command (no `--load-format dummy`) and the
    engine line's load_format: the scanner records that key from real CPU-backend logs, and the
    runbook does not make the optional `Loading weights took` line a requirement."""
    from helpers.logscan import scan_file

    text = (RUNBOOKS / "03-stage-b.md").read_text(encoding="utf-8")
    assert "grep -c -- '--load-format dummy' command.sh" in text and "log_evidence.load_format" in text
    assert "两行都要看" not in text
    logs = REPO / "tests" / "fixtures" / "logs" / "cpu"
    assert scan_file(logs / "pass-real.log").evidence["load_format"] == "auto"
    assert scan_file(logs / "pass-dummy.log").evidence["load_format"] == "dummy"
