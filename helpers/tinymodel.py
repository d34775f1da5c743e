"""Generate tiny, deterministic checkpoints locally (no downloads): config, tokenizer, weights.

The default is a dense Qwen2-style causal LM the vLLM CPU backend serves in under a minute.
Weights are random but seeded, and crafted so greedy decoding of the smoke prompt yields
visible text: the output rows of special and whitespace-only tokens are zeroed, so an ordinary
token always wins.

Variants for triage and the feature gates (the default output stays byte-identical):
- MTP: DeepSeek-V3 style (`num_nextn_predict_layers`, extra layers at index num_hidden_layers + i
  holding `eh_proj`/`enorm`/`hnorm`) or Qwen3.5 style (`mtp_num_hidden_layers`, an `mtp.` prefix);
  `mtp_weights=False` writes the config without the layers (a "checkpoint missing" case).
- fp8: DeepSeek-V3 style block fp8 (`quantization_config`, F8_E4M3 projections, each with a
  float32 `weight_scale_inv`); drop a scale with `drop_tensors` to get an unpaired key.
- vl: a Qwen2.5-VL shaped config (vision_config), config and tokenizer only.
- header-only shards (`save_sparse_shards`): real safetensors headers over sparse files, so a
  100 GB-class checkpoint costs no disk and no time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = (
    "the model runs on an ascend npu with vllm and answers every request quickly "
    "hello hi say world graph mode expert parallel capacity tokens sequence length "
    "weights dummy real stage pass fail report runbook server ready health smoke "
    "engine core worker cache memory stream capture replay attention layer norm head "
    "one two three four five six seven eight nine ten red green blue cat dog sun moon"
).split()


@dataclass
class TinySpec:
    """Shape of a generated model. Defaults follow the CPU-backend facts (head_dim 64)."""

    kind: str = "dense"  # dense | moe | vl (vl: config only)
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_position_embeddings: int = 8192
    num_experts: int = 4
    experts_per_token: int = 2
    seed: int = 0
    extra_config: dict[str, Any] = field(default_factory=dict)
    # Multi-token prediction layers declared in config (0 = none); style "layers" is DeepSeek-V3
    # (num_nextn_predict_layers), "prefix" is Qwen3.5 (mtp_num_hidden_layers, `mtp.` keys).
    mtp_layers: int = 0
    mtp_style: str = "layers"
    mtp_weights: bool = True
    # Block-fp8 projections with weight_scale_inv, as DeepSeek-V3 ships them.
    fp8: bool = False
    fp8_block: int = 128
    # dense only: Qwen3's attention (q_norm/k_norm, no q/k/v bias) instead of Qwen2's
    qk_norm: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _corpus() -> list[str]:
    """A fixed corpus: the same tokenizer on every machine."""
    lines = []
    for i in range(400):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(12)]
        lines.append(" ".join(words) + f" {i}.")
    lines += ["say hi", "Say hi!", "hello world", "How are you?"]
    return lines


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def model_config(spec: TinySpec, tokenizer_size: int) -> dict[str, Any]:
    eos = SPECIAL_TOKENS.index("<|im_end|>")
    pad = SPECIAL_TOKENS.index("<|endoftext|>")
    common = {
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "vocab_size": max(spec.vocab_size, tokenizer_size),
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if spec.kind == "moe":
        config = {
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "head_dim": spec.head_dim,
            "num_experts": spec.num_experts,
            "num_experts_per_tok": spec.experts_per_token,
            "moe_intermediate_size": spec.intermediate_size // 2,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
            "attention_bias": False,
            **common,
        }
    elif spec.kind == "vl":
        config = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **common,
            "image_token_id": config_token_id(common["vocab_size"], 1),
            "video_token_id": config_token_id(common["vocab_size"], 2),
            "vision_start_token_id": config_token_id(common["vocab_size"], 3),
            "vision_end_token_id": config_token_id(common["vocab_size"], 4),
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
            "vision_config": {
                "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                "in_chans": 3, "out_hidden_size": spec.hidden_size, "patch_size": 14,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                "fullatt_block_indexes": [1], "hidden_act": "silu", "tokens_per_second": 2,
            },
        }
    elif spec.qk_norm:
        config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": spec.head_dim,
                  "attention_bias": False, **common}
    else:
        config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common}
    if spec.mtp_layers:
        key = "num_nextn_predict_layers" if spec.mtp_style == "layers" else "mtp_num_hidden_layers"
        config[key] = spec.mtp_layers
    if spec.fp8:
        config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                         "weight_block_size": [spec.fp8_block, spec.fp8_block]}
    config.update(spec.extra_config)
    return config


def config_token_id(vocab_size: int, offset: int) -> int:
    """Ids for the VL special tokens: the last ids of the vocabulary."""
    return vocab_size - offset


def weight_shapes(spec: TinySpec, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes in the Hugging Face layout of the architecture."""
    if spec.kind == "vl":
        raise ValueError("vl tiny models are config-only: generate them with weights='dummy'")
    h, v = spec.hidden_size, config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
                                          "lm_head.weight": (v, h)}
    for i in range(spec.num_layers):
        shapes.update(decoder_layer_shapes(spec, config, f"model.layers.{i}."))
    if spec.mtp_layers and spec.mtp_weights:
        shapes.update(mtp_shapes(spec, config))
    return shapes


def mtp_shapes(spec: TinySpec, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The extra multi-token-prediction layers, named as the two public layouts name them."""
    h, v = spec.hidden_size, config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.mtp_style == "layers":  # DeepSeek-V3: model.layers.{num_hidden_layers + i}.*
        for i in range(spec.mtp_layers):
            p = f"model.layers.{spec.num_layers + i}."
            shapes.update({p + "embed_tokens.weight": (v, h), p + "enorm.weight": (h,), p + "hnorm.weight": (h,),
                           p + "eh_proj.weight": (h, 2 * h), p + "shared_head.norm.weight": (h,),
                           p + "shared_head.head.weight": (v, h)})
            shapes.update(decoder_layer_shapes(spec, config, p))
    else:  # Qwen3.5 / Qwen3-Next: mtp.*
        shapes.update({"mtp.fc.weight": (h, 2 * h), "mtp.pre_fc_norm_embedding.weight": (h,),
                       "mtp.pre_fc_norm_hidden.weight": (h,), "mtp.norm.weight": (h,)})
        for i in range(spec.mtp_layers):
            shapes.update(decoder_layer_shapes(spec, config, f"mtp.layers.{i}."))
    return shapes


def decoder_layer_shapes(spec: TinySpec, config: dict[str, Any], p: str) -> dict[str, tuple[int, ...]]:
    h, d = spec.hidden_size, spec.head_dim
    q, kv = spec.num_heads * d, spec.num_kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {}
    # One decoder layer; insertion order matters (it fixes the seeded random values).
    shapes.update({
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (q, h),
        p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.v_proj.weight": (kv, h),
        p + "self_attn.o_proj.weight": (h, q),
    })
    if spec.kind == "moe":
        m = config["moe_intermediate_size"]
        shapes[p + "self_attn.q_norm.weight"] = (d,)
        shapes[p + "self_attn.k_norm.weight"] = (d,)
        shapes[p + "mlp.gate.weight"] = (spec.num_experts, h)
        for e in range(spec.num_experts):
            ep = f"{p}mlp.experts.{e}."
            shapes.update({ep + "gate_proj.weight": (m, h), ep + "up_proj.weight": (m, h),
                           ep + "down_proj.weight": (h, m)})
    else:
        i_size = spec.intermediate_size
        if spec.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)})
        else:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        shapes.update({
            p + "mlp.gate_proj.weight": (i_size, h),
            p + "mlp.up_proj.weight": (i_size, h),
            p + "mlp.down_proj.weight": (h, i_size),
        })
    return shapes


def silent_token_ids(tokenizer) -> list[int]:
    """Ids greedy decoding must never pick: special tokens and tokens that decode to blanks."""
    ids = []
    for token_id in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([token_id], skip_special_tokens=True)
        if token_id < len(SPECIAL_TOKENS) or not text.strip():
            ids.append(token_id)
    return ids


def make_weights(spec: TinySpec, config: dict[str, Any], silent_ids: list[int]):
    import torch

    generator = torch.Generator().manual_seed(spec.seed)
    tensors = {}
    for name, shape in weight_shapes(spec, config).items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            tensor = torch.ones(shape)
        elif name.endswith(".bias"):
            tensor = torch.zeros(shape)
        else:
            tensor = torch.randn(shape, generator=generator) * 0.02
        tensors[name] = tensor
    # Every output row of a visible token gets a positive share of one direction and every
    # silent row is zero, so the top logit is always a visible token.
    lm_head = tensors["lm_head.weight"]
    lm_head[silent_ids] = 0.0
    result = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    if spec.fp8:
        result = quantize_fp8(result, spec.fp8_block)
    return result


def is_fp8_candidate(name: str, shape: tuple[int, ...]) -> bool:
    """The projections DeepSeek-V3 stores in fp8: 2-D *_proj weights (not embeddings, heads, routers)."""
    return len(shape) == 2 and name.endswith("_proj.weight")


def quantize_fp8(tensors: dict, block: int) -> dict:
    """Block-fp8 weights with their float32 `weight_scale_inv` (one scale per block x block tile)."""
    import torch

    result = {}
    for name, tensor in tensors.items():
        if not is_fp8_candidate(name, tuple(tensor.shape)):
            result[name] = tensor
            continue
        rows, cols = tensor.shape
        result[name] = tensor.float().clamp(-448, 448).to(torch.float8_e4m3fn).contiguous()
        scale_shape = (-(-rows // block), -(-cols // block))
        result[name + "_scale_inv"] = torch.ones(scale_shape, dtype=torch.float32)
    return result


def save_shards(tensors: dict, directory: Path, shards: int) -> None:
    from safetensors.torch import save_file

    names = sorted(tensors)
    if shards <= 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for index in range(shards):
        part = names[index::shards]
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / filename), metadata={"format": "pt"})
        for name in part:
            weight_map[name] = filename
            total += tensors[name].numel() * tensors[name].element_size()
    index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")


def generate(directory: Path, *, weights: str = "real", spec: TinySpec | None = None, shards: int = 1,
             drop_tensors: list[str] | None = None) -> Path:
    """Write a checkpoint into `directory` (replaced if it exists). Returns the directory."""
    spec = spec or TinySpec()
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tokenizer = build_tokenizer(spec.vocab_size)
    config = model_config(spec, tokenizer.get_vocab_size())
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": spec.max_position_embeddings,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation = {"eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"],
                  "do_sample": False}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if weights == "real":
        tensors = make_weights(spec, config, silent_token_ids(tokenizer))
        for name in drop_tensors or []:
            tensors.pop(name)
        save_shards(tensors, directory, shards)
    return directory


_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1}


def save_sparse_shards(shapes: dict[str, tuple[str, tuple[int, ...]]], directory: Path, shards: int) -> int:
    """Write real safetensors headers over sparse files: `{name: (dtype, shape)}` split in `shards`.

    The data region is a hole (no disk, no write time), so a 100 GB-class checkpoint is cheap to
    fabricate; every header, offset and file size is what a real checkpoint would have. Writes an
    index when shards > 1. Returns the total declared data size in bytes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(shapes)
    weight_map: dict[str, str] = {}
    total = 0
    for index in range(shards):
        part = names[index::shards]
        filename = (f"model-{index + 1:05d}-of-{shards:05d}.safetensors" if shards > 1
                    else "model.safetensors")
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in part:
            dtype, shape = shapes[name]
            size = _DTYPE_BYTES[dtype]
            for dim in shape:
                size *= dim
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = filename
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(directory / filename, "wb") as handle:
            handle.write(len(blob).to_bytes(8, "little"))
            handle.write(blob)
            handle.truncate(8 + len(blob) + offset)
        total += offset
    if shards > 1:
        index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")
    return total


def checkpoint_digest(directory: Path) -> str:
    """A digest of every file: two generations with the same spec must be byte-identical."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(directory).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
