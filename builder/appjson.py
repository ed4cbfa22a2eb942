"""The app.json at the top of a pushed tree: what a deploy reads from it.

Only what People's Cloud acts on is kept, as typed data, in the conventions
Heroku and Dokku read:
- `healthchecks` of the web process
  (`{"healthchecks": {"web": [{"type": "startup", "path": "/health", ...}]}}`);
- `formation`: the initial scale per type (`{"web": {"quantity": 2}}`), used on
  the app's first deploy only;
- `scripts.dokku.predeploy` (before a new release starts) and
  `scripts.dokku.postdeploy` or Heroku's `scripts.postdeploy` (once it runs);
- `cron`: `[{"command": "...", "schedule": "*/5 * * * *"}]`.
Every other key (Heroku's `env`, `addons`, ...) is ignored, so one app.json
serves several platforms. A file that is not valid JSON, or a check with a
value of the wrong type, fails the push with a reason that says where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.crontab import parse_schedule
from builder.errors import BuildError
from builder.jsonfile import read_json

FILE = "app.json"
MAX_BYTES = 256 * 1024  # an app.json is a few lines; a huge one is a mistake


@dataclass(frozen=True)
class HealthCheck:
    """One startup check of a new web instance, before it takes requests. Without
    `path` it checks that the port answers (as Dokku's "listening" check); with
    it, that GET `path` answers 2xx (with `content` in the body, when given).
    None: the node's [web] default for that value."""

    name: str = ""
    path: str = ""  # "/health": an HTTP check; "": the port must answer
    content: str = ""  # text the answer's body must contain
    attempts: int | None = None  # tries before the check fails
    timeout: float | None = None  # seconds one try may take
    wait: float | None = None  # seconds between tries
    initial_delay: float = 0.0  # seconds before the first try (Dokku's `initialDelay`)


@dataclass(frozen=True)
class CronJob:
    command: str
    schedule: str  # five crontab fields (builder.crontab), checked when parsed


@dataclass(frozen=True)
class AppJson:
    web_checks: tuple[HealthCheck, ...] = ()  # healthchecks.web of type "startup"
    formation: dict[str, int] = field(default_factory=dict)  # type -> initial instances
    predeploy: str = ""
    postdeploy: str = ""
    cron: tuple[CronJob, ...] = ()


MAX_SCALE = 20  # as `ps:scale`
MAX_CRON_JOBS = 20


def read_app_json(tree: Path) -> AppJson:
    """The tree's app.json (an empty one when there is none). Raises BuildError."""
    path = tree / FILE
    if path.is_symlink() or not path.exists():
        return AppJson()
    if not path.is_file() or path.stat().st_size > MAX_BYTES:
        raise BuildError(f"{FILE} must be a JSON file of at most {MAX_BYTES // 1024} KB")
    return parse(read_json(path))


def parse(data: Any) -> AppJson:
    if not isinstance(data, dict):
        raise BuildError(f"{FILE} must hold a JSON object ({{...}})")
    checks = data.get("healthchecks", {})
    if not isinstance(checks, dict):
        raise BuildError(f'{FILE}: "healthchecks" must be an object of process type -> checks')
    web = checks.get("web", [])
    if not isinstance(web, list):
        raise BuildError(f'{FILE}: "healthchecks.web" must be a list of checks')
    parsed = [_check(c, f"healthchecks.web[{i}]") for i, c in enumerate(web)]
    scripts = _object(data, "scripts", "scripts")
    dokku = _object(scripts, "dokku", "scripts.dokku")
    postdeploy = _get(dokku, "postdeploy", str, "scripts.dokku", "")
    heroku = _get(scripts, "postdeploy", str, "scripts", "")
    if postdeploy and heroku and postdeploy != heroku:
        raise BuildError(
            f"{FILE}: scripts.postdeploy and scripts.dokku.postdeploy differ; keep one of them"
        )
    return AppJson(
        web_checks=tuple(c for c in parsed if c is not None),
        formation=_formation(data),
        predeploy=_get(dokku, "predeploy", str, "scripts.dokku", ""),
        postdeploy=postdeploy or heroku,
        cron=_cron(data),
    )


def _object(item: dict, key: str, where: str) -> dict:
    value = item.get(key, {})
    if not isinstance(value, dict):
        raise BuildError(f'{FILE}: "{where}" must be an object ({{...}})')
    return value


def _formation(data: dict) -> dict[str, int]:
    out = {}
    for ptype, entry in _object(data, "formation", "formation").items():
        where = f"formation.{ptype}"
        if not isinstance(entry, dict):
            raise BuildError(f'{FILE}: {where} must be an object, e.g. {{"quantity": 1}}')
        quantity = _get(entry, "quantity", int, where, None)
        if quantity is None:
            continue  # Heroku's `size` alone: nothing this node acts on
        if not 0 <= quantity <= MAX_SCALE:
            raise BuildError(f"{FILE}: {where}.quantity must be between 0 and {MAX_SCALE}")
        out[ptype] = quantity
    return out


def _cron(data: dict) -> tuple[CronJob, ...]:
    jobs = data.get("cron", [])
    if not isinstance(jobs, list) or len(jobs) > MAX_CRON_JOBS:
        raise BuildError(f'{FILE}: "cron" must be a list of at most {MAX_CRON_JOBS} jobs')
    out = []
    for i, job in enumerate(jobs):
        where = f"cron[{i}]"
        if not isinstance(job, dict):
            raise BuildError(f'{FILE}: {where} must be an object with "command" and "schedule"')
        command = _get(job, "command", str, where, "")
        schedule = _get(job, "schedule", str, where, "")
        if not command.strip() or not schedule.strip():
            raise BuildError(f'{FILE}: {where} needs a "command" and a "schedule"')
        try:
            parse_schedule(schedule)
        except BuildError as e:
            raise BuildError(f"{FILE}: {where}: {e}") from None
        out.append(CronJob(command=command, schedule=schedule))
    return tuple(out)


def _check(item: Any, where: str) -> HealthCheck | None:
    """One check, or None for a type the deploy does not run (liveness, readiness)."""
    if not isinstance(item, dict):
        raise BuildError(f"{FILE}: {where} must be an object")
    kind = _get(item, "type", str, where, "startup")
    if kind != "startup":
        return None
    if "command" in item:
        raise BuildError(
            f"{FILE}: {where} is a command check, which this node does not run; "
            'use "path" (an HTTP check), or no path (the port must answer)'
        )
    path = _get(item, "path", str, where, "")
    if path and not path.startswith("/"):
        raise BuildError(f'{FILE}: {where}.path must start with "/", not {path!r}')
    attempts = _get(item, "attempts", int, where, None)
    if attempts is not None and not 1 <= attempts <= 100:
        raise BuildError(f"{FILE}: {where}.attempts must be between 1 and 100")
    seconds = {k: _get(item, k, float, where, None) for k in ("timeout", "wait", "initialDelay")}
    for k, v in seconds.items():
        if v is not None and not 0 <= v <= 600:
            raise BuildError(f"{FILE}: {where}.{k} must be between 0 and 600 seconds")
    return HealthCheck(
        name=_get(item, "name", str, where, ""),
        path=path,
        content=_get(item, "content", str, where, ""),
        attempts=attempts,
        timeout=seconds["timeout"],
        wait=seconds["wait"],
        initial_delay=seconds["initialDelay"] or 0.0,
    )


def _get(item: dict, key: str, kind: type, where: str, default: Any) -> Any:
    value = item.get(key, default)
    if value is None or value == default:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        name = {str: "a string", int: "a whole number", float: "a number"}[kind]
        raise BuildError(f"{FILE}: {where}.{key} must be {name}, not {json.dumps(value)}")
    return value
