"""The key-mapping dry run itself, in its own process: `python -m helpers.adapt.probe DIR`.

Imports vLLM (and, through the `vllm.general_plugins` entry points, the roots' registrations
such as vllm-ascend's register_model()), resolves the architecture to the class the server would
use, builds it on the meta device (no memory, single rank) and feeds its own load_weights with
empty meta tensors shaped from the safetensors headers. No tensor data is read, nothing is
served. Prints one JSON line after MARKER. A separate process: vLLM's distributed state and
plugins stay out of the caller.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "@@KEYMAP@@"
NOT_REGISTERED = "are not supported for now"  # vLLM's error for an architecture no one registered
LAYER = re.compile(r"^.*?\.layers\.\d+\.")
DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
          "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "BOOL": "bool"}


IMPORTED_S: float | None = None


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].split(". The available")[0]  # vLLM lists every parameter after it
    return f"{type(exc).__name__}: {text}".strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(directory: Path, trust_remote_code: bool, as_arch: str = "") -> tuple[Any, dict[str, Any]]:
    """(model on the meta device, where its class came from); `as_arch` builds that registered
    class instead of the checkpoint's own architecture (no adapter registered yet)."""
    import torch
    from vllm import ModelRegistry
    from vllm.config import LoadConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # what the server does first: vllm-ascend's register_model() runs here
    model_config = ModelConfig(model=str(directory), trust_remote_code=trust_remote_code, skip_tokenizer_init=True,
                               enforce_eager=True, hf_overrides={"architectures": [as_arch]} if as_arch else {})
    vllm_config = VllmConfig(model_config=model_config, load_config=LoadConfig(load_format="dummy"))
    with set_current_vllm_config(vllm_config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
        ensure_model_parallel_initialized(1, 1)
    cls, arch = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
    with set_current_vllm_config(vllm_config), torch.device("meta"):
        model = cls(vllm_config=vllm_config, prefix="")
    source = inspect.getsourcefile(cls) or ""
    return model, {"architecture": arch, "class": f"{cls.__module__}.{cls.__qualname__}", "source": source}


def feed(model: Any, tensors: dict[str, tuple[str, list[int]]]) -> dict[str, Any]:
    """load_weights over meta tensors: in one call when it goes through, else key by key so each
    fault is named with the error vLLM raises for it (the line Stage B would print)."""
    import torch

    def meta(name: str) -> Any:
        dtype, shape = tensors[name]
        return torch.empty(shape, dtype=getattr(torch, DTYPES.get(dtype, "bfloat16")), device="meta")

    names = sorted(tensors)
    params = sorted(name for name, _ in model.named_parameters())
    faults: list[dict[str, str]] = []
    try:
        loaded = set(model.load_weights((name, meta(name)) for name in names))
        one_call = True
    except Exception:  # a fault somewhere: find each one
        one_call = False
        loaded = set()
    if not one_call or set(params) - loaded:
        loaded, unused = set(), []
        groups: dict[str, list[str]] = {}
        for name in names:  # one call per layer; key by key only inside a layer that fails
            match = LAYER.match(name)
            groups.setdefault(match.group(0) if match else name, []).append(name)
        for group in groups.values():
            try:
                took = set(model.load_weights((name, meta(name)) for name in group))
            except Exception:
                took = None
            if took is not None and len(group) == 1 and not took:
                unused.append(group[0])
            if took is not None:
                loaded |= took
                continue
            for name in group:
                try:
                    took = set(model.load_weights([(name, meta(name))]))
                except Exception as exc:
                    faults.append({"key": name, "error": _first_line(exc)})
                    continue
                loaded |= took
                if not took:
                    unused.append(name)
        faults += [{"key": name, "error": "loaded by no parameter (load_weights skipped it)"} for name in unused]
    return {"params": len(params), "loaded": len(loaded & set(params)), "unfilled": sorted(set(params) - loaded),
            "faults": faults, "one_call": one_call}


def run(directory: Path, trust_remote_code: bool, nearest_arch: str = "") -> dict[str, Any]:
    """The dry run of the checkpoint's own class; where no one registered it, of `nearest_arch`
    (the nearest registered class) instead, in this process: vLLM is imported once."""
    started = time.monotonic()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from helpers import checkpoint as ckpt

    config = ckpt.read_json(directory / "config.json", "config")
    inventory, index = ckpt.take_inventory(directory, config)
    scan = ckpt.scan_headers(directory, inventory.weight_files, index)
    tensors = {name: (info.dtype, info.shape) for name, info in scan.tensors.items()}
    headers_s = round(time.monotonic() - started, 3)
    unregistered = ""
    try:
        model, where = build(directory, trust_remote_code)
    except Exception as exc:
        # pydantic wraps vLLM's own message ("2 validation errors for ModelConfig"): name the line that says why
        said = next((line.strip() for line in str(exc).splitlines() if NOT_REGISTERED in line), "")
        failed = {"built": False, "why": said or _first_line(exc), "unregistered": bool(said), "headers_s": headers_s,
                  "tensors": len(tensors)}
        if not (said and nearest_arch):
            return failed
        unregistered = said
        try:
            model, where = build(directory, trust_remote_code, nearest_arch)
        except Exception as again:
            return failed | {"why": f"{said}; as {nearest_arch}: {_first_line(again)}"}
    built_s = round(time.monotonic() - started, 3)
    result = feed(model, tensors)
    return {"built": True, **where, **result, "tensors": len(tensors), "headers_s": headers_s, "built_s": built_s,
            "elapsed_s": round(time.monotonic() - started, 3), "vllm_import_s": IMPORTED_S,
            "as_nearest": nearest_arch if unregistered else "", "unregistered_why": unregistered}


def main() -> None:
    global IMPORTED_S
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    started = time.monotonic()
    import vllm  # noqa: F401  (timed on its own: most of the probe's time on a busy box)

    IMPORTED_S = round(time.monotonic() - started, 3)
    directory = Path(sys.argv[1])
    trust = "--trust-remote-code" in sys.argv[2:]
    nearest_arch = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--nearest=")), "")
    print(MARKER + json.dumps(run(directory, trust, nearest_arch)), flush=True)


if __name__ == "__main__":
    main()
