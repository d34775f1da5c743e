"""`python -m helpers.replay --model PATH <vLLM flags>`: the replay server (see __init__.py).

Also runnable by path (`python helpers/replay/__main__.py ...`) so a profile can start it without
putting the toolkit on PYTHONPATH: the server's environment then stays exactly the box's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run by path: make `helpers` importable for this process only (sys.path, not PYTHONPATH).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from helpers.replay.invocation import Invocation, ScenarioError  # noqa: E402
from helpers.replay.scenario import load  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        scenario = load(os.environ.get("REPLAY_SCENARIO", ""))
        inv = Invocation.parse(args, os.environ)
    except ScenarioError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    from helpers.replay.server import ReplayServer  # noqa: PLC0415 - only once the inputs are valid

    return ReplayServer(scenario, inv, dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())
