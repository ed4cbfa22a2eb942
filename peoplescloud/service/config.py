"""Config vars: each change is a new release of the same slug, as on Heroku."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from peoplescloud.errors import NotFound, UsageError
from peoplescloud.service.base import ServiceBase
from peoplescloud.state import now

CONFIG_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED_KEYS = {"PORT", "PC_APP", "PC_PROCESS", "PC_RELEASE", "PC_NODE", "HOME", "PATH"}


class ConfigCommands(ServiceBase):
    def config(self, user: str, app: str) -> dict[str, str]:
        return dict(sorted(self._app(user, app).config.items()))

    def config_set(self, user: str, app: str, values: dict[str, str]) -> str | None:
        self._app(user, app)
        for key in values:
            if not key or key[0].isdigit() or set(key) - CONFIG_KEY_CHARS:
                raise UsageError(
                    f"invalid config key {key!r}: letters, digits and '_', not first a digit"
                )
            if key in RESERVED_KEYS:
                raise UsageError(f"{key} is set by People's Cloud and cannot be changed")
        return self._change_config(
            user, app, f"Set {', '.join(sorted(values))}", lambda config: config.update(values)
        )

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
        (None before the first push: there is nothing to restart)."""
        with self.state.change() as s:
            a = s.app(app)
            edit(a.config)
            if a.current is not None:
                new = replace(
                    a.release(),
                    version=a.next_version(),
                    created=now(),
                    pushed_by=user,
                    description=description,
                )
                a.releases.append(new)
                a.current = new.version
            release = a.release().name if a.current is not None else None
        self.logbus.event(app, f"{description} by {user}")
        self.reconciler.reconcile()
        return release
