"""The generator's triage variants, and that the default output did not change shape.

The default dense/moe layout is what other code (stage tests, demo) depends on: its config keys
and tensor order (which fixes the seeded values) are pinned here.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from helpers import checkpoint, tinymodel

DENSE_CONFIG_KEYS = [
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act",
    "tie_word_embeddings", "torch_dtype", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
    "use_cache",
]


def _order_digest(names) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def test_default_dense_and_moe_layout_is_unchanged():
    spec = tinymodel.TinySpec()
    config = tinymodel.model_config(spec, 1024)
    assert list(config) == DENSE_CONFIG_KEYS
    names = list(tinymodel.weight_shapes(spec, config))
    assert len(names) == 27 and names[:3] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    assert names[3] == "model.layers.0.input_layernorm.weight" and names[-1] == "model.layers.1.mlp.down_proj.weight"
    moe = tinymodel.TinySpec(kind="moe")
    moe_names = list(tinymodel.weight_shapes(moe, tinymodel.model_config(moe, 1024)))
    assert len(moe_names) == 3 + 2 * (6 + 3 + 4 * 3)
    assert _order_digest(names) != _order_digest(moe_names)


def test_mtp_and_fp8_variants_write_the_public_layouts(tmp_path):
    spec = tinymodel.TinySpec(mtp_layers=1, fp8=True)
    directory = tinymodel.generate(tmp_path / "m", spec=spec)
    config = json.loads((directory / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 1 and config["quantization_config"]["quant_method"] == "fp8"
    header = checkpoint.read_header(directory / "model.safetensors")
    assert header["model.layers.2.eh_proj.weight"]["dtype"] == "F8_E4M3"
    assert header["model.layers.2.eh_proj.weight_scale_inv"]["shape"] == [2, 4]  # 256 x 512 in 128 blocks
    assert header["model.layers.2.enorm.weight"]["dtype"] == "BF16"
    assert tinymodel.checkpoint_digest(directory) == tinymodel.checkpoint_digest(
        tinymodel.generate(tmp_path / "again", spec=spec))
    prefix = tinymodel.TinySpec(mtp_layers=2, mtp_style="prefix", mtp_weights=False)
    assert tinymodel.model_config(prefix, 1024)["mtp_num_hidden_layers"] == 2
    assert not any(n.startswith("mtp.") for n in tinymodel.weight_shapes(prefix, tinymodel.model_config(prefix, 1024)))


def test_vl_is_config_only(tmp_path):
    with pytest.raises(ValueError, match="config-only"):
        tinymodel.generate(tmp_path / "vl", spec=tinymodel.TinySpec(kind="vl"))
    directory = tinymodel.generate(tmp_path / "vl", spec=tinymodel.TinySpec(kind="vl"), weights="dummy")
    assert "vision_config" in json.loads((directory / "config.json").read_text())


def test_sparse_shards_declare_big_checkpoints_without_writing_them(tmp_path):
    shapes = {f"w{i}": ("BF16", (65536, 65536)) for i in range(4)}  # 32 GiB declared
    total = tinymodel.save_sparse_shards(shapes, tmp_path, shards=2)
    assert total == 4 * 65536 * 65536 * 2
    on_disk = sum(p.stat().st_blocks * 512 for p in tmp_path.iterdir())
    assert on_disk < 10 * 1024 * 1024
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total and len(set(index["weight_map"].values())) == 2
