"""A new architecture: nearest registered architecture, rename, transformers symbols (helpers/adapt).

Checkpoints are generated here (tiny, local) under names and renames no other test uses; the
vLLM source file and class come from the installed vLLM's registry.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import checkpoint as ckpt
from helpers.adapt import assess, nearest, newarch


def _read(directory: Path):
    config = json.loads((directory / "config.json").read_text())
    inventory, index = ckpt.take_inventory(directory, config)
    scan = ckpt.scan_headers(directory, inventory.weight_files, index)
    return config, ckpt.config_facts(config), scan.tensors, inventory


@pytest.mark.parametrize("kind, qk_norm, renames, expected", [
    ("dense", True, {"model": "backbone", "self_attn": "attn"}, "Qwen3ForCausalLM"),
    ("dense", False, {"model": "decoder", "mlp": "ffn", "embed_tokens": "wte"}, "Qwen2ForCausalLM"),
    ("moe", False, {"model": "net", "self_attn": "attn", "mlp": "moe"}, "Qwen3MoeForCausalLM"),
])
def test_a_known_layout_under_a_new_name_finds_its_architecture_and_the_rename(tmp_path, kind, qk_norm, renames,
                                                                               expected):
    directory = newarch.generate(tmp_path / "ckpt", arch="ZetaForCausalLM", model_type="zeta", qk_norm=qk_norm,
                                 renames=renames, kind=kind)
    config, facts, tensors, inventory = _read(directory)
    block = assess.assess(directory, config, facts, tensors, inventory.custom_code, registered=False)
    first = block["nearest"][0]
    assert first["arch"] == expected
    assert dict(map(tuple, block["rename"])) == {v: k for k, v in renames.items()}
    assert first["vllm_file"].startswith("vllm/model_executor/models/") and first["vllm_class"]
    assert first["weights_matched"] == first["weights_total"]
    assert block["module"] == "vllm_ascend/models/zeta.py"
    commands = assess.commands("zeta", block)
    assert commands[0]["command"] == f"make scaffold MODEL=zeta FROM={expected}"


def test_a_rename_never_merges_two_checkpoint_tensors(tmp_path):
    directory = newarch.generate(tmp_path / "ckpt", qk_norm=True, renames={"self_attn": "attn"})
    config, facts, tensors, _ = _read(directory)
    ranked = {r.arch: r for r in (nearest.compare(nearest.fingerprint(config, facts, tensors), c)
                                  for c in nearest.load_candidates())}
    llama = ranked["LlamaForCausalLM"]
    assert ["k_norm", "k_proj"] not in llama.rename
    assert any(name.endswith("k_norm") for name in llama.unmatched)
    assert ranked["Qwen3ForCausalLM"].score > llama.score


def test_remote_code_names_the_transformers_symbol_the_installed_version_lacks(tmp_path):
    directory = newarch.generate(tmp_path / "ckpt")
    config, facts, tensors, inventory = _read(directory)
    block = assess.assess(directory, config, facts, tensors, inventory.custom_code, registered=False)
    check = block["transformers"]
    assert check["checkpoint_version"] == "4.46.0"
    assert check["missing"] == [{"file": "modeling_tinynew.py", "line": 3, "module": "transformers.cache_utils",
                                 "symbol": "HybridCache"}]
    assert any("never upgrade transformers" in a and "vllm_ascend/models/tinynew.py" in a for a in block["advice"])


def test_a_registered_architecture_needs_no_adaptation(tmp_path):
    directory = newarch.generate(tmp_path / "ckpt")
    config, facts, tensors, inventory = _read(directory)
    block = assess.assess(directory, config, facts, tensors, [], registered=True)
    assert not block["needed"] and not block["nearest"] and assess.commands("x", block) == []


def test_relative_imports_of_a_vllm_model_become_absolute_when_it_moves_to_vllm_ascend():
    from helpers.adapt.relocate import absolute_imports

    text = ("from .qwen2 import Qwen2ForCausalLM\nfrom . import utils\nfrom ..layers.linear import (\n"
            "    QKVParallelLinear)\nfrom vllm.config import VllmConfig\n")
    assert absolute_imports(text) == (
        "from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM\nfrom vllm.model_executor.models import utils\n"
        "from vllm.model_executor.layers.linear import (\n    QKVParallelLinear)\nfrom vllm.config import VllmConfig\n")
