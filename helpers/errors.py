"""Exit codes and the two error kinds every command turns into one clear line.

0 pass / not applicable, 1 the model failed the gate, 2 bad input or usage,
3 environment problem (port taken by someone else, vLLM missing, no NPUs), 130 interrupted.
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_ENV = 3
EXIT_INTERRUPTED = 130


class BringupError(Exception):
    """An error shown to the user as one line, with a fixed exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(BringupError):
    """Bad input: wrong model path, invalid JSON, unknown backend... (exit 2)."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(BringupError):
    """The machine is not ready: port held by another process, vLLM missing (exit 3)."""

    exit_code = EXIT_ENV


class SignOffRefused(BringupError):
    """The evidence does not sign the bring-up off (no full-layer Stage B PASS) (exit 1)."""

    exit_code = EXIT_FAIL


class Interrupted(Exception):
    """Raised from a signal handler so that ``finally`` blocks stop our server."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
