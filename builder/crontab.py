"""Crontab schedules, as app.json's `cron` writes them (Dokku's format): five
fields, minute hour day-of-month month day-of-week, each `*`, a number, a range
`a-b`, a step `*/n` or `a-b/n`, or a list of those (`1,15,30-40/2`); or one of
@hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually). Times are
UTC. As in Vixie cron, when both day fields are restricted a day matching
either runs the job; day-of-week 0 and 7 are Sunday. Names (`mon`, `jan`) are
not understood: use numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from builder.errors import BuildError

NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))
HORIZON_DAYS = 5 * 366  # a schedule with no time in this many days never runs (Feb 30)


@dataclass(frozen=True)
class Schedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday, as datetime.weekday()
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    def matches(self, t: datetime) -> bool:
        return (
            t.minute in self.minutes
            and t.hour in self.hours
            and t.month in self.months
            and self._day(t)
        )

    def _day(self, t: datetime) -> bool:
        by_date, by_weekday = t.day in self.days, t.weekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return by_date and by_weekday
        return by_date or by_weekday

    def next_after(self, t: datetime) -> datetime | None:
        """The first minute strictly after `t` the schedule runs at; None if none
        comes within HORIZON_DAYS."""
        t = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = t + timedelta(days=HORIZON_DAYS)
        while t < end:
            if t.month not in self.months or not self._day(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None


def parse_schedule(text: str) -> Schedule:
    """Raises BuildError with what is wrong and where."""
    words = NICKNAMES.get(text.strip(), text).split()
    if len(words) != 5:
        raise BuildError(
            f"schedule {text!r} must have 5 fields (minute hour day month weekday), "
            'e.g. "*/5 * * * *", or be @hourly, @daily, @weekly, @monthly or @yearly'
        )
    minutes, hours, days, months = (
        _field(w, name, low, high) for w, (name, low, high) in zip(words, FIELDS, strict=False)
    )
    # Cron's Sunday is 0 or 7, Monday 1; datetime's Monday is 0, Sunday 6.
    weekdays = frozenset((d - 1) % 7 for d in _field(words[4], "day of week", 0, 7))
    schedule = Schedule(minutes, hours, days, months, weekdays, words[2] == "*", words[4] == "*")
    if schedule.next_after(datetime(2000, 1, 1)) is None:
        raise BuildError(f"schedule {text!r} never runs (no such date): check its day and month")
    return schedule


def _field(word: str, name: str, low: int, high: int) -> frozenset[int]:
    out: set[int] = set()
    for part in word.split(","):
        span, _, step_text = part.partition("/")
        step = _number(step_text, name, 1, high) if step_text else 1
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _number(a, name, low, high), _number(b, name, low, high)
            if first > last:
                raise BuildError(f"{name} range {span!r} goes backwards: write it low-high")
        else:
            first = _number(span, name, low, high)
            last = high if step_text else first  # `5/15`: from 5 on, every 15
        out.update(range(first, last + 1, step))
    return frozenset(out)


def _number(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BuildError(f"{name} {text!r} must be a whole number from {low} to {high}")
    return int(text)
