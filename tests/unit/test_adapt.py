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


def _now(**changes) -> "status.Now":
    from helpers import status

    base = dict(model_path="/ckpt/tiny-new",
                fingerprint={"config_sha256": "c1", "weights_sha256": "w1", "weight_files": 1, "weight_bytes": 10},
                config_mtime=None, weights_mtime=None,
                roots={"vllm_ascend": {"path": "/roots/vllm-ascend", "head": "h1", "fingerprint": "f1", "git": True,
                                       "dirty": True}},
                versions={"vllm": "0.32.0", "transformers": "5.19.0"})
    return status.Now(**(base | changes))


def test_a_keymap_is_reused_only_on_the_same_checkpoint_roots_versions_and_tp(tmp_path):
    """Stage B's dry run is skipped only where its answer cannot differ (keymap.json records
    what it was made on); a fallback answer (the probe did not build) is never reused."""
    from helpers.adapt import keymap

    made = _now()
    clean = keymap.Keymap("clean", "load_weights on meta tensors", model_class="m.TinyNewForCausalLM", tensors=3)
    path = keymap.write(clean, tmp_path, "tiny-new", keymap.made_on(made, 1))
    found = keymap.reusable(tmp_path, "tiny-new", _now(), 1)
    assert found and found[0] == path and found[1].verdict == "clean" and found[1].tensors == 3

    root = made.roots["vllm_ascend"]
    for changed in (_now(roots={"vllm_ascend": root | {"fingerprint": "f2"}}),   # the adapter edited
                    _now(roots={"vllm_ascend": root | {"head": "h2"}}),
                    _now(roots={"vllm_ascend": root | {"path": "/elsewhere"}}),
                    _now(roots={"vllm_ascend": root | {"git": False, "path": str(tmp_path)}}),  # not comparable
                    _now(roots={"vllm_ascend": root, "vllm": {"path": "/roots/vllm", "git": True}}),
                    _now(fingerprint=made.fingerprint | {"weights_sha256": "w2"}),
                    _now(versions={"vllm": "0.33.0", "transformers": "5.19.0"})):
        assert keymap.reusable(tmp_path, "tiny-new", changed, 1) is None
    assert keymap.reusable(tmp_path, "tiny-new", _now(), 2) is None
    # a root that does not exist holds no code: it compares as absent
    absent = {"vllm": {"path": str(tmp_path / "no-vllm-root"), "head": None, "fingerprint": "", "git": False}}
    keymap.write(clean, tmp_path, "tiny-new", keymap.made_on(_now(roots=made.roots | absent), 1))
    assert keymap.reusable(tmp_path, "tiny-new", _now(roots=made.roots | absent), 1)

    # a newer keymap on other roots does not hide the one that matches; a fallback never counts
    keymap.write(keymap.Keymap("faults", "load_weights on meta tensors"), tmp_path, "tiny-new",
                 keymap.made_on(_now(roots={"vllm_ascend": root | {"fingerprint": "f2"}}), 1))
    keymap.write(keymap.Keymap("fallback-clean", "header coverage", why_fallback="the probe took over 600 s"),
                 tmp_path, "tiny-new", keymap.made_on(made, 1))
    assert keymap.reusable(tmp_path, "tiny-new", _now(), 1)[0] == path


def test_a_dirty_file_put_back_as_it_was_is_the_same_tree(tmp_path):
    """The roots' fingerprint reads the dirty files' content: saving a file again, or restoring it,
    keeps the tree's fingerprint (and what was proven on it); a changed byte does not."""
    from helpers import sourcetree

    (tmp_path / "adapter.py").write_text("A = 1\n")
    first = sourcetree.fingerprint(tmp_path, "h1", [("??", "adapter.py")])
    (tmp_path / "adapter.py").write_text("A = 2\n")
    edited = sourcetree.fingerprint(tmp_path, "h1", [("??", "adapter.py")])
    (tmp_path / "adapter.py").write_text("A = 1\n")
    assert sourcetree.fingerprint(tmp_path, "h1", [("??", "adapter.py")]) == first != edited
