"""Error types that map to the CLI's exit codes."""


class InputError(Exception):
    """The input data is unusable (missing file or column, unreadable dataset): exit code 3."""


class NotImplementedStage(Exception):
    """A subcommand whose stage is not built yet: exit code 2."""
