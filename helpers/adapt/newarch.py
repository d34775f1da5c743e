"""A tiny architecture vLLM does not know, generated locally (no downloads), for the adaptation
path end to end: its own model_type and architecture name, weight names renamed from a layout
vLLM knows (Qwen2, Qwen3 or Qwen3-MoE), and remote code whose modeling file imports a transformers symbol
the installed transformers lacks (HybridCache left transformers in 5.0), as such checkpoints do.
The configuration file itself imports only what exists, so `--trust-remote-code` can read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import tinymodel

# checkpoint component -> the known layout's component; a consistent rename triage must find
RENAMES = {"model": "transformer", "self_attn": "attention", "mlp": "feed_forward",
           "embed_tokens": "tok_embeddings"}
MISSING_IMPORT = "from transformers.cache_utils import HybridCache"

CONFIGURATION = '''\
"""{arch} configuration: a Qwen2-shaped configuration under its own model_type."""
from transformers import {base_config}


class {prefix}Config({base_config}):
    model_type = "{model_type}"
'''

MODELING = '''\
"""{arch} modeling code as the checkpoint ships it (for transformers; vLLM uses its own class)."""
import torch
{missing_import}
from transformers import PreTrainedModel

from .configuration_{model_type} import {prefix}Config


class {arch}(PreTrainedModel):
    config_class = {prefix}Config

    def forward(self, input_ids: torch.Tensor, past_key_values: "HybridCache | None" = None):
        raise NotImplementedError("served by vLLM")
'''


def renamed(name: str, renames: dict[str, str]) -> str:
    return ".".join(renames.get(part, part) for part in name.split("."))


def generate(directory: Path, *, arch: str = "TinyNewForCausalLM", model_type: str = "tinynew",
             qk_norm: bool = False, renames: dict[str, str] | None = None, kind: str = "dense") -> Path:
    """Write the checkpoint into `directory` (replaced if it exists)."""
    from safetensors.torch import load_file, save_file

    renames = RENAMES if renames is None else renames
    directory = tinymodel.generate(directory, spec=tinymodel.TinySpec(kind=kind, qk_norm=qk_norm))
    weights = directory / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({renamed(n, renames): t for n, t in tensors.items()}, str(weights), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    prefix = arch.removesuffix("ForCausalLM")
    base_config = "Qwen3MoeConfig" if kind == "moe" else "Qwen3Config" if qk_norm else "Qwen2Config"
    config.update({"architectures": [arch], "model_type": model_type, "transformers_version": "4.46.0",
                   "auto_map": {"AutoConfig": f"configuration_{model_type}.{prefix}Config",
                                "AutoModelForCausalLM": f"modeling_{model_type}.{arch}"}})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    values = {"arch": arch, "prefix": prefix, "model_type": model_type, "base_config": base_config,
              "missing_import": MISSING_IMPORT}
    (directory / f"configuration_{model_type}.py").write_text(CONFIGURATION.format(**values), encoding="utf-8")
    (directory / f"modeling_{model_type}.py").write_text(MODELING.format(**values), encoding="utf-8")
    return directory
