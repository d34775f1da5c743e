"""A new architecture, from config.json to the one signed commit.

- nearest.py: the registered vLLM architectures nearest to a checkpoint vLLM does not know,
  ranked with why, and the consistent weight rename (rules: architectures.yaml);
- remote_code.py: the checkpoint's *.py read statically against the installed transformers;
- scaffold.py: `make scaffold`, the minimal adapter where upstream keeps it;
- keymap.py: `make keymap`, the adapter's own load_weights over header-only tensors;
- relocate.py: `make deliver` moves an adapter written in the vLLM root into vllm-ascend;
- newarch.py: a tiny generated "new" architecture for the end-to-end test.
"""
