"""The one exception type for user mistakes.

Library code raises `UserError` for anything the user can fix (a missing file, a bad config key,
a corrupt shard, a vocab mismatch, out of memory). The CLI prints its message as one line on stderr
and exits non-zero, without a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """An invalid config value (ModelConfig, TrainConfig, --set, TOML, config.json): a `UserError`,
    so the CLI prints it in one line; also a `ValueError`, as for any bad argument value."""


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error, whichever layer raised it (torch's own type, or a compiler's wrapper
    that only says so in its text)."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
