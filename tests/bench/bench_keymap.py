"""Benchmark: the key-mapping dry run against the Stage B start that finds the same fault.

1. `make keymap`'s check on a Qwen2.5-72B-shaped, 4-shard checkpoint (~145 GB of bf16 declared,
   real safetensors headers over sparse files: no data, no disk) with one weight key misnamed:
   vLLM's own Qwen2ForCausalLM.load_weights over meta tensors names the key. Target: under 10 s.
2. A real Stage B start (vLLM CPU server, KEYMAP_CHECK=off) of a tiny checkpoint with the same
   fault, until it fails on that key. A 100 GB-class Stage B reads every byte of the weights
   first, so the tiny start is a lower bound of what the fault costs there.
Run: make bench.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from helpers import tinymodel  # noqa: E402
from helpers.adapt import keymap  # noqa: E402

TARGET_S = 10.0
GOOD, BAD = "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.down.weight"


def fabricate(directory: Path) -> int:
    spec = tinymodel.TinySpec(hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                              intermediate_size=29568, vocab_size=152064, max_position_embeddings=32768)
    config = tinymodel.model_config(spec, spec.vocab_size)
    shapes = {(BAD if name == GOOD else name): ("BF16", shape)
              for name, shape in tinymodel.weight_shapes(spec, config).items()}
    total = tinymodel.save_sparse_shards(shapes, directory, shards=4)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return total


def tiny_with_fault(directory: Path) -> Path:
    from safetensors.torch import load_file, save_file

    tinymodel.generate(directory)
    weights = directory / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({(BAD if n == GOOD else n): t for n, t in tensors.items()}, str(weights), metadata={"format": "pt"})
    return directory


def stage_b(directory: Path, runs: Path) -> tuple[float, dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), MODEL=str(directory), RUNS_DIR=str(runs), BACKEND="cpu",
               PORT=str(port), KEYMAP_CHECK="off", READY_TIMEOUT="900")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "helpers", "stage", "--stage", "b"], env=env, cwd=REPO,
                   capture_output=True, text=True, timeout=1200)
    elapsed = time.perf_counter() - start
    record = json.loads((runs / directory.name / "latest-stage-b" / "evidence.json").read_text())
    return elapsed, record


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-keymap-") as tmp:
        large = Path(tmp) / "Qwen2.5-72B-shaped"
        total = fabricate(large)
        config = json.loads((large / "config.json").read_text())
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = keymap.check(large, config)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        named = [f["key"] for f in result.unmapped]
        print(f"1. keymap on {total / 1e9:.0f} GB of headers (4 shards, {result.tensors} tensors): "
              f"{result.elapsed_s:.2f} s wall, {cpu_s:.2f} s CPU, {result.verdict}, names {named} ({result.model_class})")
        t = result.timings
        if t.get("elapsed_s") is not None:
            print(f"   in the probe: importing vLLM {t['vllm_import_s']:.1f} s, headers {t['headers_s']:.2f} s, "
                  f"vLLM config + model on meta {t['built_s'] - t['headers_s']:.1f} s, load_weights "
                  f"{t['elapsed_s'] - t['built_s']:.2f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        tiny = tiny_with_fault(Path(tmp) / "tiny-fault")
        stage_s, record = stage_b(tiny, Path(tmp) / "runs")
        cause = (record.get("root_cause") or {}).get("text") or record.get("reason")
        print(f"2. Stage B start of a tiny checkpoint with the same fault: {stage_s:.1f} s to "
              f"{record['verdict']} [{record['category']}]: {str(cause)[:160]}")
        print(f"side by side: keymap {result.elapsed_s:.1f} s (100 GB-class headers) vs Stage B {stage_s:.1f} s "
              f"(tiny, a lower bound): Stage B takes {stage_s / result.elapsed_s:.1f}x as long")
        ok = result.elapsed_s < TARGET_S and named == [BAD] and record["verdict"] == "FAIL"
        print(f"target: keymap under {TARGET_S:.0f} s wall naming {BAD}: {'PASS' if ok else 'FAIL'}"
              + ("" if ok else f" (its CPU time {cpu_s:.1f} s: a busy box stretches the wall time)"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
