"""Helpers of the vllm-ascend bring-up runbook toolkit.

One module per concern; the click CLI in ``helpers.cli`` is the only entry point the shell
scripts call (``python -m helpers <command>``).
"""

__version__ = "0.1.0"
