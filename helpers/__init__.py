"""Helpers of the vllm-ascend bring-up runbook toolkit.

One module per concern; the click CLI in ``helpers.cli`` is the only entry point the shell
scripts call (``python -m helpers <command>``).
"""

__version__ = "0.1.0"


def load_yaml(source):
    """yaml.safe_load with libyaml's C parser where PyYAML has it (about 8x faster: every make step
    parses the signature catalog and profiles again), the same data either way."""
    import yaml

    return yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
