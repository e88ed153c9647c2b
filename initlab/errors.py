"""Exceptions that end a run with one line for the user instead of a traceback."""


class InitlabError(Exception):
    """A user-facing error: its message is the whole story, printed as one line."""


class ConfigError(InitlabError):
    """A config value that cannot work; raised before any work is done."""

    def __init__(self, key: str, value: object, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"{key}={value!r} is invalid: {accepted}")


class RunDirTaken(InitlabError):
    """The run directory holds another run, or a live process is writing one there."""


class Diverged(Exception):
    """Raised inside the training loop when the loss becomes non-finite."""

    def __init__(self, step: int, loss: float) -> None:
        self.step, self.loss = step, loss
        super().__init__(f"non-finite loss {loss} at step {step}")


class Interrupted(BaseException):
    """SIGTERM (or SIGHUP): flush what is recorded, then exit non-zero. A BaseException, as
    KeyboardInterrupt is, so no `except Exception` (a figure's, a loader's) takes it for a failure."""
