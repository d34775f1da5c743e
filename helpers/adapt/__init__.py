"""A new architecture, from config.json to the one signed commit.

- assess.py: triage's adaptation block (nearest architectures, transformers check, next commands);
- nearest.py: the registered vLLM architectures nearest to a checkpoint vLLM does not know,
  ranked with why, and the consistent weight rename (rules: architectures.yaml);
- remote_code.py: the checkpoint's *.py read statically against the installed transformers;
- scaffold.py: `make scaffold`, the minimal adapter where upstream keeps it;
- keymap.py + probe.py: `make keymap`, the adapter's own load_weights over header-only meta
  tensors in a process of its own; gate.py: the Stage B refusal it backs;
- relocate.py: `make deliver` moves an adapter written in the vLLM root into vllm-ascend;
- commands.py: the two CLI commands; newarch.py: a tiny generated "new" architecture for tests.
"""
