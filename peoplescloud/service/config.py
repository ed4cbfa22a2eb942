"""Config vars: each change is a new release of the same slug, as on Heroku."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from peoplescloud.errors import NotFound, PCError, UsageError
from peoplescloud.service.base import ServiceBase

CONFIG_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED_KEYS = {"PORT", "PC_APP", "PC_PROCESS", "PC_RELEASE", "PC_NODE", "HOME", "PATH"}
# Names that make the C library or a shell load other code into every program of
# an instance, the node's own that start and watch it included. (Interpreter
# variables like PYTHONPATH or NODE_OPTIONS stay allowed: they reach only the
# app's interpreter, which runs the app's code anyway; the node runs Python with -I.)
LOADER_PREFIXES = ("LD_", "DYLD_")
LOADER_KEYS = {"GCONV_PATH", "GLIBC_TUNABLES", "BASH_ENV"}
LOADER_NAMES = "LD_*, DYLD_*, " + ", ".join(sorted(LOADER_KEYS))


def check_config_key(key: str) -> None:
    """Refuse a config var name the node cannot pass on as it is."""
    if not key or key[0].isdigit() or set(key) - CONFIG_KEY_CHARS:
        raise UsageError(f"invalid config key {key!r}: letters, digits and '_', not first a digit")
    if key in RESERVED_KEYS:
        raise UsageError(f"{key} is set by People's Cloud and cannot be changed")
    if key.upper().startswith(LOADER_PREFIXES) or key.upper() in LOADER_KEYS:
        raise UsageError(
            f"{key} would change how programs load code, so it is refused "
            f"({LOADER_NAMES}); set what your app reads instead"
        )


def config_size(config: dict[str, str]) -> int:
    """Bytes the vars take in a process's environment ("KEY=VALUE\0" each)."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in config.items())


class ConfigCommands(ServiceBase):
    def config(self, user: str, app: str) -> dict[str, str]:
        return dict(sorted(self._app(user, app).config.items()))

    def config_set(self, user: str, app: str, values: dict[str, str]) -> str | None:
        self._app(user, app)
        shares = self.settings.shares
        most, total = shares.max_config_value_kb * 1024, shares.max_config_total_kb * 1024
        for key, value in values.items():
            check_config_key(key)
            if len(value.encode()) > most:
                raise PCError(
                    f"{key} is {len(value.encode())} bytes, more than this node's limit of "
                    f"{shares.max_config_value_kb} KB a value ([shares] max_config_value_kb); "
                    "keep big data in a file of the app or a service it reads"
                )

        def set_(config: dict[str, str]) -> None:
            size = config_size({**config, **values})
            if size > total:
                raise PCError(
                    f"{app}'s config vars would take {size} bytes, more than this node's "
                    f"limit of {shares.max_config_total_kb} KB ([shares] max_config_total_kb); "
                    "unset some, or keep big data elsewhere"
                )
            config.update(values)

        return self._change_config(user, app, f"Set {', '.join(sorted(values))}", set_)

    def config_unset(self, user: str, app: str, keys: list[str]) -> str | None:
        a = self._app(user, app)
        missing = [k for k in keys if k not in a.config]
        if missing:
            raise NotFound(f"{app} has no config var {', '.join(missing)}")

        def unset(config: dict[str, str]) -> None:
            for k in keys:
                del config[k]

        return self._change_config(user, app, f"Unset {', '.join(keys)}", unset)

    def _change_config(
        self, user: str, app: str, description: str, edit: Callable[[dict[str, str]], None]
    ) -> str | None:
        """Config vars change with a new release of the same slug (as on Heroku), so
        the reconciler replaces the instances: a daemon killed half-way through still
        ends with every instance on the new environment. The new release's name
        (None before the first push: there is nothing to restart).

        A release with a release phase runs it first, with the new config, under
        the app's deploy lock; if it fails, the config stays as it was."""
        a = self._app(user, app)
        phased = a.current is not None and (a.release().release_command or a.release().predeploy)
        if not phased:
            return self._commit_config(user, app, description, edit)
        with self.deployer.exclusive(app):
            a = self.state.read().app(app)
            trial = replace(a, config=dict(a.config))
            edit(trial.config)  # a refusal (too big) comes before the phase runs
            assert a.current is not None
            self.deployer.phases.before(trial, a.current, lambda _line: None)
            return self._commit_config(user, app, description, edit)

    def _commit_config(
        self, user: str, app: str, description: str, edit: Callable[[dict[str, str]], None]
    ) -> str | None:
        with self.state.change() as s:
            a = s.app(app)
            edit(a.config)
            release = a.rerelease(user, description)
        self.logbus.event(app, f"{description} by {user}")
        self._record(user, app, f"config: {description}")  # key names only, never values
        self.reconciler.reconcile()
        return release
