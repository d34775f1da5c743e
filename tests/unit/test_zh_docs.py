"""The Chinese documents read as an Ascend engineer writes them: no English sentence outside
commands, identifiers and quoted log lines (code spans and fenced blocks), and one term per
concept as runbooks/glossary.zh.md lists it, across the runbooks, README.zh.md, the report /
runbook / issue-comment templates and what they render. Rendered documents come from the
evidence fixtures, once as they are (the goldens) and once with every new branch in play: a
changes.json fixture of `make changes`' shape, a layer-reduced run and a delivery record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, base_env, run_cli
from tests.fixtures.fake_delivery import VLLM_FILES, copy_evidence, make_vllm_root, write_changes

GLOSSARY = REPO / "runbooks" / "glossary.zh.md"
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
CODE = re.compile(r"(`+)(.+?)\1")
# Four or more Latin words in a row outside code: a sentence, not an identifier or a name.
SENTENCE = re.compile(r"[A-Za-z][A-Za-z'’.-]*(?:[ ,:/()]+[A-Za-z][A-Za-z'’.-]*){3,}")
RENDERED = ("report.zh.md", "runbook.zh.md", "issue-comment.zh.md")


def prose(text: str) -> str:
    text = FENCE.sub("", text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"https?://\S+", " ", text)
    return CODE.sub(" ", text)


def english_sentences(text: str) -> list[str]:
    return [m.group(0) for m in SENTENCE.finditer(prose(text))]


def glossary() -> list[tuple[str, list[str]]]:
    rows = []
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] not in ("统一用语", "---"):
            rows.append((cells[1], [v.strip() for v in cells[2].split("、") if v.strip()]))
    return rows


def source_documents() -> list[Path]:
    runbooks = [p for p in (REPO / "runbooks").glob("*.md") if p != GLOSSARY]
    templates = sorted((REPO / "templates").glob("*.zh.md.j2")) + [REPO / "templates/_zh.j2"]
    return sorted(runbooks) + [REPO / "README.zh.md"] + templates


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """Every rendered Chinese document: the goldens, plus a report with code changes, a
    layer-reduced run and a delivery commit recorded."""
    docs = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
            for p in sorted((REPO / "tests/fixtures/golden").glob("*/*.zh.md"))}
    tmp = tmp_path_factory.mktemp("zh")
    runs = copy_evidence(tmp / "runs", "tiny-qwen2")
    model_dir = runs / "tiny-qwen2"
    write_changes(runs, "tiny-qwen2", {"vllm": make_vllm_root(tmp)}, VLLM_FILES + [
        {"root": "vllm-ascend", "path": "vllm_ascend/patch_model.py", "status": "added", "kind": "backend", "minimal": True},
        {"root": "vllm-ascend", "path": "scratch.py", "status": "added", "kind": "other", "minimal": False}])
    evidence = model_dir / "20261121T212500Z-eager/evidence.json"
    data = json.loads(evidence.read_text())
    data["layers"] = {"reduced": True, "how": "hf-overrides", "config": 2, "used": 1}
    evidence.write_text(json.dumps(data))
    (model_dir / "deliverables").mkdir()
    (model_dir / "deliverables/deliver.json").write_text(json.dumps({
        "commit": "0123456789abcdef", "title": "[Model] Support tiny-qwen2", "repo": "/vllm-workspace/vllm-ascend",
        "branch": "bringup", "mode": "backport", "files": ["vllm_ascend/patch_model.py"],
        "vllm_patch": str(model_dir / "deliverables/vllm-changes.patch"), "vllm_files": ["vllm/x.py"],
        "left_out": ["vllm-ascend: scratch.py"], "at": "2026-11-22T00:00:00+00:00"}))
    # lm-eval reports full floats: the documents show at most four decimals
    accuracy = model_dir / "20261121T213500Z-accuracy/accuracy.json"
    data = json.loads(accuracy.read_text())
    data["tasks"][0]["metrics"]["exact_match,strict-match"] = 0.2845617210245711
    accuracy.write_text(json.dumps(data))
    result = run_cli(["report"], base_env(runs, MODEL="tiny-qwen2"), timeout=60)
    assert result.returncode == 0, result.stderr
    for name in RENDERED:
        docs[f"rendered/{name}"] = (model_dir / "deliverables" / name).read_text(encoding="utf-8")
    assert "需要 vLLM 改动" in docs["rendered/report.zh.md"] and "`reduced-layers`" in docs["rendered/report.zh.md"]
    assert "0123456789abcdef" in docs["rendered/issue-comment.zh.md"]
    assert "0.2846" in docs["rendered/report.zh.md"] and "0.2846" in docs["rendered/issue-comment.zh.md"]
    assert "| 新增 |" in docs["rendered/report.zh.md"] and "| added |" not in docs["rendered/report.zh.md"]
    return docs


def test_the_sentence_check_sees_english_and_spares_code():
    assert english_sentences("启动失败：the server never became ready。")
    assert not english_sentences("见 `the server never became ready` 与 Atlas A2 Series。")
    assert not english_sentences("```text\nserves 4 concurrent requests at 4096 tokens\n```\n")


def test_rendered_chinese_documents_have_no_english_sentence(rendered):
    found = {name: english_sentences(text) for name, text in rendered.items()}
    found = {name: hits for name, hits in found.items() if hits}
    assert not found, f"English sentences in Chinese documents: {found}"


# What a Chinese reader must never see outside code spans: Python values, the matrix's English
# verdict words, unformatted floats (five decimals or more), and an ASCII colon right after a Chinese label.
NOT_CHINESE = re.compile(r"\b(?:None|True|False|SKIPPED|nan)\b|\d+\.\d{5,}|[\u4e00-\u9fff]:(?!//)")


def test_rendered_chinese_documents_hold_no_python_values_raw_floats_or_ascii_colons(rendered):
    found = {name: NOT_CHINESE.findall(prose(text)) for name, text in rendered.items()}
    found = {name: hits for name, hits in found.items() if hits}
    assert not found, f"not written for a Chinese reader: {found}"


def test_runbooks_and_readme_have_no_english_sentence():
    found = {str(p.relative_to(REPO)): english_sentences(p.read_text(encoding="utf-8"))
             for p in source_documents() if p.suffix == ".md"}
    found = {name: hits for name, hits in found.items() if hits}
    assert not found, f"English sentences: {found}"


def test_the_glossary_lists_terms_with_their_variants():
    rows = glossary()
    assert len(rows) >= 15 and all(variants for _term, variants in rows)
    terms = [term for term, _ in rows]
    assert len(terms) == len(set(terms))


def yaml_chinese() -> dict[str, str]:
    """The Chinese the rules carry (hint_zh, why_zh, zh, ... in helpers/**/*.yaml): it reaches the
    console, the report and runbooks/signatures.zh.md, so it follows the glossary too."""
    found: dict[str, list[str]] = {}

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and (key == "zh" or str(key).endswith("_zh")):
                    found.setdefault(where, []).append(value)
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for path in sorted((REPO / "helpers").rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")), str(path.relative_to(REPO)))
    return {where: "\n".join(values) for where, values in found.items()}


def test_the_glossary_check_reads_the_chinese_of_the_rules():
    texts = yaml_chinese()
    assert "helpers/signatures.yaml" in texts and "helpers/profiles/ascend.yaml" in texts
    assert "回退阶梯" in texts["helpers/profiles/ascend.yaml"]


def test_every_document_uses_the_glossary_terms_and_none_of_their_variants(rendered):
    texts = {str(p.relative_to(REPO)): prose(p.read_text(encoding="utf-8")) for p in source_documents()}
    texts.update({name: prose(text) for name, text in rendered.items()})
    texts.update({name: prose(text) for name, text in yaml_chinese().items()})
    wrong = [f"{name}: {variant} (use {term})" for term, variants in glossary() for variant in variants
             for name, text in texts.items() if variant in text]
    assert not wrong, "glossary variants used:\n  " + "\n  ".join(wrong)
    unused = [term for term, _ in glossary() if not any(term in text for text in texts.values())]
    assert not unused, f"glossary terms no document uses: {unused}"
