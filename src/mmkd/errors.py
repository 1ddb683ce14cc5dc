"""Errors a user can act on. The CLI prints them without a traceback and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user: a flag, a config value, a path. Message names the fix."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in a configuration; all of them are listed in the message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the configuration:\n{lines}")


class DataError(UsageError):
    """The data cannot be used (e.g. too many unreadable samples)."""
