"""A replay backend: a process that behaves like a vllm-ascend server from the outside.

`python -m helpers.replay --model PATH <vLLM flags>` reads a *scenario* (REPLAY_SCENARIO: a
name under helpers/replay/scenarios/ or a path), prints the scenario's recorded server log with
its relative timing, opens --host/--port when the scenario says the server is ready, answers the
OpenAI endpoints the toolkit uses, and fails the way the recorded server failed. Which lines it
prints and how it fails depends on the flags and the environment it was started with, as
declared in the scenario (see helpers/replay/README.md for the schema).

Standard library plus PyYAML only; nothing here imports the rest of the toolkit, so the replay
server stays a separate program like `vllm serve` is.
"""
