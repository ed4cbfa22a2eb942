"""Custom domains and their certificates: `domains`, `domains:add`,
`domains:remove`, `certs`. Whoever may use an app (its owner, a collaborator,
an admin) may manage its domains, as its config."""

from __future__ import annotations

from gitserver.service import CertRow
from peoplescloud.certs import CertRecord, describe
from peoplescloud.domains import MAX_DOMAINS, check_host
from peoplescloud.errors import NotFound, PCError
from peoplescloud.service.base import ServiceBase


class DomainCommands(ServiceBase):
    def domains(self, user: str, app: str) -> list[str]:
        self._app(user, app)
        return sorted(h for h, a in self.state.read().domains.items() if a == app)

    def domains_add(self, user: str, app: str, host: str) -> None:
        host = check_host(host, self.settings.domain)
        self._app(user, app)
        with self.state.change() as s:  # the check and the add in one change: no race
            self._app(user, app, s)
            owner = s.domains.get(host)
            if owner == app:
                raise PCError(f"{app} already has {host}: `domains {app}` lists its domains")
            if owner is not None:  # whose it is is told only to admins: app names are private
                asker = s.users.get(user)
                which = f" ({owner})" if asker and asker.admin else ""
                raise PCError(
                    f"{host} belongs to another app{which}: its owner must remove it first"
                )
            if sum(a == app for a in s.domains.values()) >= MAX_DOMAINS:
                raise PCError(f"{app} has {MAX_DOMAINS} domains, the most an app may have")
            s.domains[host] = app
            s.certs[host] = CertRecord(app=app).to_dict()  # ordered in the background
        self._record(user, app, f"domains:add {host}")

    def domains_remove(self, user: str, app: str, host: str) -> None:
        host = host.strip().lower().rstrip(".")
        self._app(user, app)
        with self.state.change() as s:
            self._app(user, app, s)
            if s.domains.get(host) != app:
                raise NotFound(f"{app} has no domain {host}: `domains {app}` lists its domains")
            del s.domains[host]
            s.certs.pop(host, None)
        self._record(user, app, f"domains:remove {host}")

    def certs(self, user: str, app: str) -> list[CertRow]:
        self._app(user, app)
        snap = self.state.read()
        rows = []
        for host in sorted(h for h, a in snap.domains.items() if a == app):
            record = CertRecord.from_dict(snap.certs.get(host, {"app": app}))
            rows.append(
                CertRow(
                    host=host,
                    issuer=record.issuer or "-",
                    not_after=record.not_after or "-",
                    status=describe(record, tls_on=bool(self.settings.tls.port)),
                )
            )
        return rows
