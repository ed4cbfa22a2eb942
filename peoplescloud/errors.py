"""The node's exceptions. Each carries a reason a user can read; the edges
(CLI, SSH, HTTP) turn them into messages and exit codes."""


class PCError(Exception):
    """Base class: something the user can fix, with a readable reason."""

    exit_code = 1


class UsageError(PCError):
    """Wrong arguments or an unknown command."""

    exit_code = 2


class NotFound(PCError):
    """The named app, release, process or key does not exist."""

    exit_code = 3


class Forbidden(PCError):
    """The authenticated user may not do this."""

    exit_code = 4


class ConfigError(PCError):
    """A setting has a value that cannot work."""

    exit_code = 2


class RuntimeFailure(PCError):
    """A runtime (docker, process) could not start, stop or inspect an instance."""
