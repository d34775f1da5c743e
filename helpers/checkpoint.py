"""What a checkpoint directory holds, read without loading a single tensor.

- inventory: files, weight shards, index, custom code, tokenizer/processor files;
- safetensors headers: 8-byte little-endian length + JSON, nothing else is read;
- config facts, nested `text_config` / `language_config` included;
- MTP layers in the weights.
Weight coverage against the architecture is helpers/coverage.py.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER_LIMIT = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
               "F4": 1, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}
FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "merges.txt", "special_tokens_map.json", "added_tokens.json", "qwen.tiktoken", "tiktoken.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja")
NESTED_SECTIONS = ("text_config", "language_config", "llm_config", "thinker_config.text_config")
MOE_KEYS = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
MTP_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers")
MM_KEYS = ("vision_config", "audio_config", "vision_tower", "mm_vision_tower", "speech_config", "visual")
# Tensors that belong to a quantisation scheme, not to the architecture: checked for pairing.
QUANT_AUX = re.compile(r"\.(weight_scale_inv|weight_scale|input_scale|k_scale|v_scale|weight_zero_point)$")
# Tensor names that end in a layer index: `model.layers.61.` or `model.language_model.layers.3.`.
LAYER_INDEX = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\.")
MTP_MARKERS = ("eh_proj", "enorm", "hnorm", "shared_head")


class CheckpointError(Exception):
    """A checkpoint problem that stops triage itself (no directory, no config...)."""


# --- inventory ------------------------------------------------------------------------------

@dataclass
class Inventory:
    files: list[dict[str, Any]]
    subdirectories: list[str]
    weight_format: str  # safetensors | pytorch-bin | none
    weight_files: list[str]
    index_file: str | None
    index_total_size: int | None
    index_tensor_count: int | None
    shard_count: int
    missing_shards: list[dict[str, Any]]
    unindexed_weight_files: list[str]
    empty_weight_files: list[str]
    custom_code: list[str]
    auto_map: dict[str, Any]
    tokenizer_auto_map: dict[str, Any]
    tokenizer_files: list[str]
    processor_files: list[str]
    chat_template: bool
    generation_config: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def take_inventory(directory: Path, config: dict[str, Any]) -> tuple[Inventory, dict[str, Any] | None]:
    """Files and their roles; returns the inventory and the parsed index (or None)."""
    files, subdirectories = [], []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir():
                subdirectories.append(entry.name)
            elif entry.is_file():
                files.append({"name": entry.name, "bytes": entry.stat().st_size})
    names = {f["name"]: f["bytes"] for f in files}
    problems: list[str] = []
    safetensors = sorted(n for n in names if n.endswith(".safetensors"))
    bins = sorted(n for n in names if re.fullmatch(r"(pytorch_model|model).*\.(bin|pt|pth)", n))
    index_names = sorted(n for n in names if n.endswith(".safetensors.index.json"))
    index_file = "model.safetensors.index.json" if "model.safetensors.index.json" in names else (
        index_names[0] if index_names else None)
    index, weight_files, missing_shards, unindexed = None, safetensors, [], []
    index_total = index_count = None
    if index_file:
        index = read_json(directory / index_file, "safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_file} has no weight_map object: not a safetensors index")
        index_total = (index.get("metadata") or {}).get("total_size")
        index_count = len(weight_map)
        shards = sorted(set(weight_map.values()))
        weight_files = [s for s in shards if s in names]
        for shard in shards:
            if shard not in names:
                tensors = [k for k, v in weight_map.items() if v == shard]
                missing_shards.append({"file": shard, "tensors": len(tensors), "example": tensors[0]})
                problems.append(f"{index_file} names {shard} ({len(tensors)} tensors) but the file is missing")
        unindexed = [s for s in safetensors if s not in shards]
        if not weight_map:
            problems.append(f"{index_file} has an empty weight_map")
    empty = [n for n in weight_files if names.get(n, 0) == 0]
    for name in empty:
        problems.append(f"weight file {name} is empty (0 bytes)")
    weight_format = "safetensors" if (safetensors or index_file) else ("pytorch-bin" if bins else "none")
    if weight_format == "pytorch-bin":
        weight_files = bins
    tokenizer_config = {}
    if "tokenizer_config.json" in names:
        try:
            tokenizer_config = read_json(directory / "tokenizer_config.json", "tokenizer config")
        except CheckpointError as exc:
            problems.append(str(exc))
    generation = None
    if "generation_config.json" in names:
        try:
            generation = read_json(directory / "generation_config.json", "generation config")
        except CheckpointError as exc:
            problems.append(str(exc))
    inventory = Inventory(
        files=files, subdirectories=subdirectories, weight_format=weight_format, weight_files=weight_files,
        index_file=index_file, index_total_size=index_total, index_tensor_count=index_count,
        shard_count=len(weight_files) + len(missing_shards), missing_shards=missing_shards,
        unindexed_weight_files=unindexed, empty_weight_files=empty,
        custom_code=sorted(n for n in names if n.endswith(".py")),
        auto_map=config.get("auto_map") or {},
        tokenizer_auto_map=(tokenizer_config or {}).get("auto_map") or {} if isinstance(tokenizer_config, dict) else {},
        tokenizer_files=[n for n in TOKENIZER_FILES if n in names],
        processor_files=[n for n in PROCESSOR_FILES if n in names],
        chat_template=bool(isinstance(tokenizer_config, dict) and tokenizer_config.get("chat_template"))
        or "chat_template.jinja" in names or "chat_template.json" in names,
        generation_config=generation if isinstance(generation, dict) else None,
        problems=problems,
    )
    return inventory, index


# --- safetensors headers --------------------------------------------------------------------

@dataclass
class TensorInfo:
    dtype: str
    shape: list[int]
    file: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 1)


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file; reads 8 + header-length bytes, never tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{size} bytes: too short for a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length < 2 or length > HEADER_LIMIT or length > size - 8:
            raise ValueError(f"header length {length} does not fit the file ({size} bytes): not safetensors")
        blob = handle.read(length)
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            entry["dtype"], list(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has no dtype/shape/data_offsets") from None
        if end > data_size:
            raise ValueError(f"truncated: tensor {name!r} ends at byte {end} of a {data_size}-byte data section")
    return header


@dataclass
class HeaderScan:
    tensors: dict[str, TensorInfo]
    data_bytes: int
    unreadable: list[dict[str, str]]
    index_mismatches: list[str]
    dtypes: dict[str, int]


def scan_headers(directory: Path, weight_files: list[str], index: dict[str, Any] | None) -> HeaderScan:
    tensors: dict[str, TensorInfo] = {}
    unreadable, mismatches, data_bytes = [], [], 0
    weight_map = (index or {}).get("weight_map") or {}
    for filename in weight_files:
        path = directory / filename
        try:
            header = read_header(path)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            unreadable.append({"file": filename, "error": reason})
            continue
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            info = TensorInfo(dtype=str(entry["dtype"]), shape=[int(x) for x in entry["shape"]], file=filename)
            tensors[name] = info
            data_bytes += info.nbytes
            if weight_map and weight_map.get(name) != filename:
                mismatches.append(f"{name} is in {filename} but the index says {weight_map.get(name)}")
    for name, filename in weight_map.items():
        if name not in tensors and filename in weight_files and not any(u["file"] == filename for u in unreadable):
            mismatches.append(f"index puts {name} in {filename} but that header does not hold it")
    dtypes: dict[str, int] = {}
    for info in tensors.values():
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
    return HeaderScan(tensors=tensors, data_bytes=data_bytes, unreadable=unreadable,
                      index_mismatches=mismatches, dtypes=dict(sorted(dtypes.items())))


# --- config facts ---------------------------------------------------------------------------

def _section(config: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if isinstance(node, dict) else None


def lookup(config: dict[str, Any], key: str) -> tuple[Any, str | None]:
    """A config value from the top level or a nested text/language section, with where it was."""
    if config.get(key) is not None:
        return config[key], key
    for section in NESTED_SECTIONS:
        node = _section(config, section)
        if node is not None and node.get(key) is not None:
            return node[key], f"{section}.{key}"
    return None, None


@dataclass
class ConfigFacts:
    architectures: list[str]
    model_type: str | None
    torch_dtype: str | None
    quantization: dict[str, Any] | None
    max_position_embeddings: int | None
    rope_scaling: Any
    num_hidden_layers: int | None
    num_attention_heads: int | None
    num_key_value_heads: int | None
    head_dim: int | None
    head_dim_derived: bool
    hidden_size: int | None
    vocab_size: int | None
    tie_word_embeddings: bool
    moe: dict[str, Any]
    mtp: dict[str, Any]
    multimodal: dict[str, Any]
    mla: bool
    sources: dict[str, str]


def config_facts(config: dict[str, Any]) -> ConfigFacts:
    sources: dict[str, str] = {}

    def get(key: str) -> Any:
        value, where = lookup(config, key)
        if where:
            sources[key] = where
        return value

    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    head_dim = get("head_dim")
    derived = False
    nope, rope_dim = get("qk_nope_head_dim"), get("qk_rope_head_dim")
    if head_dim is None and nope and rope_dim:  # MLA: the query/key head is nope + rope
        head_dim, derived = nope + rope_dim, True
    if head_dim is None and heads and hidden:
        head_dim, derived = hidden // heads, True
    kv_heads = get("num_key_value_heads")
    if kv_heads is None and heads is not None:
        kv_heads = heads  # no GQA key: one KV head per attention head
        sources["num_key_value_heads"] = "num_attention_heads (no num_key_value_heads key)"
    quant = config.get("quantization_config") or _section(config, "text_config.quantization_config")
    quantization = None
    if isinstance(quant, dict):
        method = str(quant.get("quant_method") or quant.get("method") or quant.get("fmt") or "unknown")
        quantization = {"method": method, "fp8": "fp8" in method.lower() or quant.get("fmt") in ("e4m3", "e5m2"),
                        "weight_block_size": quant.get("weight_block_size"), "config": quant}
    experts, expert_key = None, None
    for key in MOE_KEYS:
        value = get(key)
        if value:
            experts, expert_key = value, sources.get(key, key)
            break
    mtp_layers, mtp_key = 0, None
    for key in MTP_KEYS:
        value = get(key)
        if value:
            mtp_layers, mtp_key = int(value), sources.get(key, key)
            break
    mm_keys = [k for k in config if k in MM_KEYS or k.endswith("vision_config") or k.endswith("audio_config")]
    tie, _ = lookup(config, "tie_word_embeddings")
    rope = config.get("rope_scaling") if config.get("rope_scaling") is not None else get("rope_scaling")
    if rope is None:
        rope = get("rope_parameters")
    return ConfigFacts(
        architectures=[str(a) for a in architectures],
        model_type=config.get("model_type"),
        torch_dtype=get("torch_dtype") or get("dtype"),
        quantization=quantization,
        max_position_embeddings=get("max_position_embeddings"),
        rope_scaling=rope,
        num_hidden_layers=get("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        head_dim_derived=derived,
        hidden_size=hidden,
        vocab_size=get("vocab_size"),
        tie_word_embeddings=bool(tie),
        moe={"is_moe": bool(experts), "num_experts": experts, "key": expert_key,
             "experts_per_token": get("num_experts_per_tok") or get("moe_topk"),
             "shared_experts": get("n_shared_experts")},
        mtp={"config_layers": mtp_layers, "key": mtp_key},
        multimodal={"is_multimodal": bool(mm_keys), "keys": mm_keys,
                    "vision": any("vision" in k or k == "visual" for k in mm_keys),
                    "audio": any("audio" in k or "speech" in k for k in mm_keys)},
        mla=get("kv_lora_rank") is not None,
        sources=sources,
    )


# --- MTP in the weights ---------------------------------------------------------------------

def mtp_tensor_names(names: list[str], num_hidden_layers: int | None) -> tuple[list[str], list[str]]:
    """Tensors of MTP layers (`mtp.` prefix, or layers at index >= num_hidden_layers) and layer ids."""
    found, layers = [], set()
    for name in names:
        if name.startswith("mtp.") or name.startswith("model.mtp."):
            found.append(name)
            match = re.match(r"(?:model\.)?mtp\.layers\.(\d+)\.", name)
            layers.add(f"mtp.layers.{match.group(1)}" if match else "mtp")
            continue
        match = LAYER_INDEX.match(name)
        if match and num_hidden_layers is not None and int(match.group(1)) >= num_hidden_layers:
            found.append(name)
            layers.add(f"layers.{match.group(1)}")
    return found, sorted(layers)
