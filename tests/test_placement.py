"""Placement and failover decisions (pure functions: no daemon, no clock).

Each rule of `swarm/placement.py` has its table of cases here, and a
seeded random test checks the invariants over many generated swarms.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from peoplescloud.desired import desired_instances
from peoplescloud.settings import CLOCK_SLACK, WATCHDOG_SECONDS, Settings
from peoplescloud.state import App, Release, Snapshot
from swarm.placement import (
    DOWN,
    LEASE_SECONDS,
    MARGIN_SECONDS,
    SUSPECT,
    UP,
    Member,
    Placement,
    holders,
    member_state,
    place,
    slugs_in_use,
    wanted_instances,
)

NOW = datetime(2026, 11, 23, 21, 0, 0, tzinfo=UTC).timestamp()
MB = 512  # the default instance memory in these tests

LEASE_FOR = {UP: NOW + 3, SUSPECT: NOW - 1, DOWN: NOW - 60}


def member(
    name: str,
    state: str = UP,
    memory_mb: int = 2048,
    max_apps: int = 20,
    cpus: float = 1.0,
    leaving: bool = False,
) -> Member:
    return Member(name, memory_mb, cpus, max_apps, LEASE_FOR[state], leaving)


def app(name: str, stopped: bool = False, **scale: int) -> App:
    """An app whose current release v1 has one process type per `scale` entry."""
    processes = {ptype: f"run {ptype}" for ptype in scale}
    release = Release(1, f"cid-{name}", "procfile", "img", processes, "c", "ann", "t", "")
    return App(name, "ann", "t", scale=dict(scale), releases=[release], current=1, stopped=stopped)


def apps(*items: App) -> dict[str, App]:
    return {a.name: a for a in items}


MARGIN = 6.0  # the tests' own margin: the default follows the watchdog's timing


def run(members: list[Member], the_apps: dict[str, App], current=None) -> Placement:
    return place(members, the_apps, current or {}, NOW, MB, MARGIN)


# -- member_state ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease_expires", "now", "margin", "expected"),
    [
        (100.0, 99.9, 4.0, UP),  # lease still valid
        (100.0, 100.0, 4.0, SUSPECT),  # the lease has just ended
        (100.0, 103.9, 4.0, SUSPECT),  # within the margin
        (100.0, 104.0, 4.0, DOWN),  # lease + margin: surely stopped
        (100.0, 500.0, 4.0, DOWN),
        (100.0, 100.5, 0.0, DOWN),  # no margin: down as soon as the lease ends
    ],
)
def test_member_state(lease_expires: float, now: float, margin: float, expected: str) -> None:
    m = Member("n1", 2048, 1.0, 20, lease_expires)
    assert member_state(m, now, margin) == expected


def test_default_failover_waits_the_lease_the_watchdog_and_the_clocks() -> None:
    """A frozen member's instances are ended by their watchdog within
    WATCHDOG_SECONDS of its lease's end: only then are they placed elsewhere."""
    assert LEASE_SECONDS == 3.0
    assert MARGIN_SECONDS == WATCHDOG_SECONDS + CLOCK_SLACK
    failover = LEASE_SECONDS + MARGIN_SECONDS
    m = Member("n1", 2048, 1.0, 20, lease_expires=NOW + LEASE_SECONDS)  # renewed at NOW
    assert member_state(m, NOW + LEASE_SECONDS + WATCHDOG_SECONDS) == SUSPECT
    assert member_state(m, NOW + failover - 0.01) == SUSPECT
    assert member_state(m, NOW + failover) == DOWN


# -- wanted instances --------------------------------------------------------


def test_wanted_instances_follow_scale_and_skip_stopped_or_unreleased_apps() -> None:
    unreleased = App("fresh", "ann", "t")
    the_apps = apps(app("mybot", bot=2, web=0), app("quiet", stopped=True, bot=1), unreleased)
    assert wanted_instances(the_apps, 300) == {("mybot", "bot.1"): 300, ("mybot", "bot.2"): 300}


# -- rule 1: stability -------------------------------------------------------


@pytest.mark.parametrize("state", [UP, SUSPECT])
def test_running_instance_stays_on_an_up_or_suspect_node(state: str) -> None:
    """Never moved to balance: n2 is empty, yet both instances stay on n1."""
    members = [member("n1", state), member("n2")]
    current = {("mybot", "bot.1"): "n1", ("mybot", "bot.2"): "n1"}
    p = run(members, apps(app("mybot", bot=2)), current)
    assert p.nodes == current
    assert not p.unplaced and not p.handoffs


def test_suspect_node_keeps_its_instances_and_says_until_when() -> None:
    n1 = Member("n1", 2048, 1.0, 20, lease_expires=NOW - 1)  # down at NOW + 5
    p = run([n1, member("n2")], apps(app("mybot", bot=1)), {("mybot", "bot.1"): "n1"})
    assert p.nodes == {("mybot", "bot.1"): "n1"}
    assert p.decisions == ["bot.1 of mybot: n1 is suspect; left there until it is down at 21:00:05"]


def test_instances_stay_on_a_node_whose_shares_shrank_but_nothing_new_goes_there() -> None:
    """A host that lowered its shares keeps what runs (stability) but gets nothing more."""
    members = [member("n1", memory_mb=512), member("n2", memory_mb=1024)]
    current = {("a", "bot.1"): "n1", ("b", "bot.1"): "n1"}  # 1024 MB on a 512 MB share
    p = run(members, apps(app("a", bot=2), app("b", bot=1)), current)
    assert p.nodes == {("a", "bot.1"): "n1", ("b", "bot.1"): "n1", ("a", "bot.2"): "n2"}
    assert p.free_mb == {"n1": -512, "n2": 512}


# -- rule 2: removed, down and new instances ---------------------------------


def test_instance_on_a_down_node_moves_to_an_up_node() -> None:
    n2 = Member("n2", 2048, 1.0, 20, lease_expires=NOW - 30)  # down since NOW - 24
    members = [member("n1", SUSPECT), n2, member("n3")]
    p = run(members, apps(app("mybot", bot=1)), {("mybot", "bot.1"): "n2"})
    assert p.nodes == {("mybot", "bot.1"): "n3"}  # never the suspect n1
    assert p.decisions == ["bot.1 of mybot: n2 is down since 20:59:36; moved to n3"]
    assert not p.handoffs  # its lease surely ended: n3 may start it at once


@pytest.mark.parametrize(
    ("the_apps", "current", "expected", "decision"),
    [
        pytest.param(
            apps(app("mybot", bot=1)),
            {("mybot", "bot.1"): "n1", ("mybot", "bot.2"): "n1"},
            {("mybot", "bot.1"): "n1"},
            "bot.2 of mybot: no longer wanted; dropped from n1",
            id="scaled-down",
        ),
        pytest.param(
            apps(app("mybot", web=1)),
            {("mybot", "web.1"): "n1", ("mybot", "bot.1"): "n1"},
            {("mybot", "web.1"): "n1"},
            "bot.1 of mybot: no longer wanted; dropped from n1",
            id="process-type-gone",
        ),
        pytest.param(
            apps(app("mybot", stopped=True, bot=1)),
            {("mybot", "bot.1"): "n1"},
            {},
            "bot.1 of mybot: no longer wanted; dropped from n1",
            id="app-stopped",
        ),
        pytest.param(
            apps(),
            {("gone", "bot.1"): "n2"},
            {},
            "bot.1 of gone: no longer wanted; dropped from n2",
            id="app-destroyed-on-a-down-node",
        ),
    ],
)
def test_removed_instances_are_dropped(the_apps, current, expected, decision) -> None:
    p = run([member("n1"), member("n2", DOWN)], the_apps, current)
    assert p.nodes == expected
    assert decision in p.decisions
    assert not p.unplaced


def test_instance_of_a_departed_member_is_placed_again() -> None:
    p = run([member("n1")], apps(app("mybot", bot=1)), {("mybot", "bot.1"): "old"})
    assert p.nodes == {("mybot", "bot.1"): "n1"}
    assert p.decisions == ["bot.1 of mybot: old is no longer a member; moved to n1"]


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([member("n1", SUSPECT), member("n2", DOWN), member("n3")], "n3"),
        ([member("n1", leaving=True), member("n2")], "n2"),
    ],
)
def test_new_instances_go_to_up_members_only(members: list[Member], expected: str) -> None:
    p = run(members, apps(app("mybot", bot=1)))
    assert p.nodes == {("mybot", "bot.1"): expected}
    assert p.decisions == [f"bot.1 of mybot: placed on {expected}"]


def test_with_no_up_member_nothing_is_placed_and_each_reason_is_given() -> None:
    members = [member("n1", SUSPECT), member("n2", DOWN), member("n3", leaving=True)]
    p = run(members, apps(app("mybot", bot=1)), {("mybot", "bot.1"): "n2"})
    reason = "no member has room for 512 MB: n1 is suspect, n2 is down, n3 is leaving"
    assert p.nodes == {}
    assert p.unplaced == {("mybot", "bot.1"): reason}
    assert p.decisions[0].startswith("bot.1 of mybot: n2 is down since ")
    assert p.decisions[0].endswith(f"; not placed: {reason}")


def test_an_empty_swarm_places_nothing() -> None:
    p = run([], apps(app("mybot", bot=1)))
    assert p.unplaced == {("mybot", "bot.1"): "the swarm has no members"}


# -- rule 3: capacity --------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "expected_nodes", "unplaced"),
    [
        pytest.param(
            [member("n1", memory_mb=1000)],
            {("a", "bot.1"): "n1"},
            {("a", "bot.2"): "no member has room for 512 MB: n1 has 488 MB free"},
            id="memory",
        ),
        pytest.param(
            [member("n1", memory_mb=1024)],
            {("a", "bot.1"): "n1", ("a", "bot.2"): "n1"},
            {},
            id="memory-exactly-full",
        ),
        pytest.param(
            [member("n1", memory_mb=1000), member("n2", memory_mb=600)],
            {("a", "bot.1"): "n1", ("a", "bot.2"): "n2"},
            {},
            id="memory-overflows-to-a-sibling",
        ),
    ],
)
def test_memory_share_is_never_exceeded(members, expected_nodes, unplaced) -> None:
    p = run(members, apps(app("a", bot=2)))
    assert p.nodes == expected_nodes
    assert p.unplaced == unplaced


def test_cpu_share_is_never_exceeded() -> None:
    """Each instance counts `instance_cpus` against what its member shares."""
    members = [member("n1", cpus=0.5), member("n2", cpus=0.25)]
    p = place(members, apps(app("a", bot=4)), {}, NOW, 64, instance_cpus=0.25)
    assert sorted(p.nodes.values()) == ["n1", "n1", "n2"]
    assert p.unplaced == {
        ("a", "bot.4"): "no member has room for 64 MB and 0.25 CPU: "
        "n1 has 0 CPU free, n2 has 0 CPU free"
    }


def test_max_apps_counts_apps_not_instances() -> None:
    """The second instance of `a` fits (no new app); `b` would be a second app."""
    p = run([member("n1", max_apps=1)], apps(app("a", bot=2), app("b", bot=1)))
    assert p.nodes == {("a", "bot.1"): "n1", ("a", "bot.2"): "n1"}
    assert p.unplaced == {("b", "bot.1"): "no member has room for 512 MB: n1 runs 1 apps (its max)"}


def test_per_app_memory_overrides_the_default() -> None:
    """`resources:set big memory=1500M`: its instance needs 1500 MB, not the default."""
    big = app("big", bot=1)
    big.resources = {"*": {"memory_mb": 1500}}
    p = run([member("n1", memory_mb=1024), member("n2", memory_mb=1600)], apps(big))
    assert p.nodes == {("big", "bot.1"): "n2"}
    assert p.free_mb == {"n1": 1024, "n2": 100}


def test_placement_counts_each_instances_own_memory_and_cpus() -> None:
    """Mixed figures: a type's own beat the app's "*", which beat the default (512 MB)."""
    small = app("small", bot=3)
    small.resources = {"*": {"memory_mb": 128}}
    mixed = app("mixed", web=1, bot=1)
    mixed.resources = {"*": {"memory_mb": 256, "cpus": 0.5}, "web": {"memory_mb": 700}}
    plain = app("plain", bot=1)
    members = [member("n1", memory_mb=1024, cpus=1.0), member("n2", memory_mb=1024, cpus=1.0)]
    p = place(members, apps(small, mixed, plain), {}, NOW, MB, instance_cpus=0.25)
    assert len(p.nodes) == 6 and not p.unplaced
    used = {
        n: sum(
            mb
            for (a, proc), node in p.nodes.items()
            if node == n
            for mb in [
                {"small": 128, "plain": 512}.get(a) or (700 if proc.startswith("web") else 256)
            ]
        )
        for n in ("n1", "n2")
    }
    assert p.free_mb == {n: 1024 - used[n] for n in used}
    assert sum(used.values()) == 3 * 128 + 700 + 256 + 512
    # One more 700 MB web does not fit anywhere: the figures, not 512 each, are counted.
    mixed.scale["web"] = 2
    p = place(members, apps(small, mixed, plain), p.nodes, NOW, MB, instance_cpus=0.25)
    assert set(p.unplaced) == {("mixed", "web.2")}
    assert "no member has room for 700 MB and 0.5 CPU" in p.unplaced[("mixed", "web.2")]


def test_cpus_are_a_soft_weight_never_a_limit() -> None:
    # Equal memory: the node with more CPUs per instance wins the tie ...
    members = [member("n1", cpus=1.0), member("n2", cpus=4.0)]
    current = {("x", "bot.1"): "n1", ("y", "bot.1"): "n2"}
    p = run(members, apps(app("x", bot=1), app("y", bot=1), app("z", bot=1)), current)
    assert p.nodes[("z", "bot.1")] == "n2"
    # ... and a node sharing almost no CPU still runs what fits its memory.
    p = run([member("n1", cpus=0.1)], apps(app("a", bot=4)))
    assert len(p.nodes) == 4 and not p.unplaced


# -- rule 4: spread ----------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "scale", "counts"),
    [
        ([member("n1"), member("n2"), member("n3")], 3, {"n1": 1, "n2": 1, "n3": 1}),
        ([member("n1"), member("n2"), member("n3")], 4, {"n1": 2, "n2": 1, "n3": 1}),
        ([member("n1"), member("n2")], 5, {"n1": 3, "n2": 2}),
        # spread wins over free memory while possible
        ([member("n1", memory_mb=8192), member("n2", memory_mb=1024)], 2, {"n1": 1, "n2": 1}),
        # then free memory decides
        ([member("n1", memory_mb=1024), member("n2", memory_mb=8192)], 3, {"n1": 1, "n2": 2}),
    ],
)
def test_instances_of_one_app_spread_over_nodes(members, scale, counts) -> None:
    p = run(members, apps(app("a", bot=scale)))
    assert _counts(p) == counts


def test_spread_counts_instances_already_running() -> None:
    current = {("a", "bot.1"): "n1", ("b", "bot.1"): "n2", ("b", "bot.2"): "n2"}
    p = run([member("n1"), member("n2")], apps(app("a", bot=2), app("b", bot=2)), current)
    assert p.nodes[("a", "bot.2")] == "n2"  # n1 runs a's bot.1, though n1 has more free memory


def test_equal_nodes_are_chosen_by_name() -> None:
    p = run([member("n3"), member("n2"), member("n1")], apps(app("a", bot=1)))
    assert p.nodes == {("a", "bot.1"): "n1"}


def test_a_member_that_holds_the_slug_is_preferred() -> None:
    """It starts the instance without fetching the slug: failover in seconds."""
    held = {"n2": ["cid-a"], "n1": ["cid-other"]}
    p = place([member("n1"), member("n2")], apps(app("a", bot=1)), {}, NOW, MB, held=held)
    assert p.nodes == {("a", "bot.1"): "n2"}


def test_holding_the_slug_comes_after_spreading_the_app() -> None:
    held = {"n1": ["cid-a"]}
    p = place([member("n1"), member("n2")], apps(app("a", bot=2)), {}, NOW, MB, held=held)
    assert p.nodes == {("a", "bot.1"): "n1", ("a", "bot.2"): "n2"}


def test_a_failed_over_instance_lands_on_a_holder() -> None:
    members = [member("n1", DOWN), member("n2", memory_mb=4096), member("n3")]
    held = {"n1": ["cid-a"], "n3": ["cid-a"]}
    p = place(members, apps(app("a", bot=1)), {("a", "bot.1"): "n1"}, NOW, MB, held=held)
    assert p.nodes == {("a", "bot.1"): "n3"}  # though n2 has more memory free


def test_first_instances_of_every_app_come_before_second_ones() -> None:
    """Room for two: a scaled-high app cannot starve another app of its first instance."""
    p = run([member("n1", memory_mb=1024)], apps(app("a", bot=3), app("b", bot=1)))
    assert p.nodes == {("a", "bot.1"): "n1", ("b", "bot.1"): "n1"}
    assert set(p.unplaced) == {("a", "bot.2"), ("a", "bot.3")}


def test_process_numbers_sort_as_numbers() -> None:
    """bot.10 comes after bot.9, not after bot.1."""
    p = run([member("n1", memory_mb=MB * 9)], apps(app("a", bot=10)))
    assert set(p.unplaced) == {("a", "bot.10")}


# -- leaving members (`pc swarm leave`) --------------------------------------


def test_instances_of_a_leaving_member_move_with_a_handoff() -> None:
    members = [member("n1", leaving=True), member("n2")]
    p = run(members, apps(app("a", bot=1)), {("a", "bot.1"): "n1"})
    assert p.nodes == {("a", "bot.1"): "n2"}
    assert p.handoffs == {("a", "bot.1"): "n1"}  # n2 waits until n1 has stopped it
    assert p.decisions == ["bot.1 of a: n1 is leaving; moved to n2"]
    assert p.free_mb == {"n1": 2048, "n2": 1536}


def test_a_leaving_member_keeps_what_cannot_go_elsewhere() -> None:
    members = [member("n1", leaving=True), member("n2", memory_mb=100)]
    p = run(members, apps(app("a", bot=1)), {("a", "bot.1"): "n1"})
    assert p.nodes == {("a", "bot.1"): "n1"}
    assert not p.handoffs
    assert p.decisions == [
        "bot.1 of a: n1 is leaving; stays there: "
        "no member has room for 512 MB: n1 is leaving, n2 has 100 MB free"
    ]


def test_failed_over_instances_get_room_before_moves_off_a_leaving_member() -> None:
    """A stopped instance matters more than one that still runs."""
    members = [member("n1", leaving=True), member("n2", DOWN), member("n3", memory_mb=MB)]
    current = {("a", "bot.1"): "n1", ("b", "bot.1"): "n2"}
    p = run(members, apps(app("a", bot=1), app("b", bot=1)), current)
    assert p.nodes == {("a", "bot.1"): "n1", ("b", "bot.1"): "n3"}


# -- rule 5: determinism -----------------------------------------------------


def test_same_input_same_output_whatever_the_iteration_order() -> None:
    members = [member(f"n{i}", memory_mb=1024 + 512 * (i % 3)) for i in range(1, 6)]
    the_apps = apps(*(app(f"app{i}", bot=i % 3 + 1, web=i % 2) for i in range(8)))
    current = {("app1", "bot.1"): "n2", ("app2", "web.1"): "n9"}
    first = run(members, the_apps, current)
    for seed in range(5):
        rng = random.Random(seed)
        shuffled_members = rng.sample(members, len(members))
        shuffled_apps = dict(rng.sample(list(the_apps.items()), len(the_apps)))
        shuffled_current = dict(rng.sample(list(current.items()), len(current)))
        assert run(shuffled_members, shuffled_apps, shuffled_current) == first


# -- rule 6: slug holders ----------------------------------------------------


@pytest.mark.parametrize(
    ("members", "slugs", "current", "replication", "expected"),
    [
        pytest.param(
            [member("n1"), member("n2")],
            {"c": []},
            {},
            None,
            {"c": ["n1", "n2"]},
            id="default-R-is-all-of-two-members",
        ),
        pytest.param(
            [member(f"n{i}") for i in range(1, 6)],
            {"c": []},
            {},
            None,
            {"c": ["n1", "n2", "n3"]},
            id="default-R-is-three",
        ),
        pytest.param(
            [member("n1"), member("n2", DOWN), member("n3", SUSPECT)],
            {"c": []},
            {},
            3,
            {"c": ["n1"]},
            id="fewer-up-than-R",
        ),
        pytest.param(
            [member(f"n{i}") for i in range(1, 6)],
            {"c": []},
            {"c": ["n4", "n5"]},
            2,
            {"c": ["n4", "n5"]},
            id="current-holders-kept",
        ),
        pytest.param(
            [member("n1"), member("n2"), member("n3", DOWN), member("n4")],
            {"c": []},
            {"c": ["n3", "n4"]},
            2,
            {"c": ["n1", "n4"]},
            id="down-holder-replaced",
        ),
        pytest.param(
            [member("n1"), member("n2"), member("n3", leaving=True)],
            {"c": []},
            {"c": ["n3"]},
            1,
            {"c": ["n1"]},
            id="leaving-holder-replaced",
        ),
        pytest.param(
            [member(f"n{i}") for i in range(1, 6)],
            {"c": ["n5"]},
            {},
            2,
            {"c": ["n1", "n5"]},
            id="runners-preferred",
        ),
        pytest.param(
            [member("n1"), member("n2", memory_mb=4096), member("n3")],
            {"c": []},
            {},
            1,
            {"c": ["n2"]},
            id="then-free-memory",
        ),
        pytest.param(
            [member(f"n{i}") for i in range(1, 5)],
            {"c": ["n4"]},
            {"c": ["n1", "n2", "n3", "n4"]},
            2,
            {"c": ["n1", "n4"]},
            id="extra-holders-trimmed-keeping-runners",
        ),
        pytest.param(
            [member("n1"), member("n2")],
            {"c": []},
            {"old": ["n1", "n2"]},
            2,
            {"c": ["n1", "n2"]},
            id="unused-slug-dropped",
        ),
    ],
)
def test_holders(members, slugs, current, replication, expected) -> None:
    assert holders(members, slugs, current, NOW, replication) == expected


def test_holders_prefer_free_memory_after_placement() -> None:
    members = [member("n1"), member("n2"), member("n3")]
    free = {"n1": 100, "n2": 1500, "n3": 900}
    assert holders(members, {"c": []}, {}, NOW, 1, free_mb=free) == {"c": ["n2"]}


def test_replication_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        holders([member("n1")], {"c": []}, {}, NOW, 0)


def test_slugs_in_use_keeps_recent_releases_and_knows_where_each_runs() -> None:
    a = app("a", bot=2)
    a.releases = [
        Release(v, f"a-v{v}", "procfile", "img", {"bot": "x"}, "c", "ann", "t", "")
        for v in (1, 2, 3)
    ]
    a.current = 3
    stopped = app("s", stopped=True, bot=1)
    nodes = {("a", "bot.1"): "n1", ("a", "bot.2"): "n2"}
    assert slugs_in_use(apps(a, stopped), nodes, keep=2) == {
        "a-v2": set(),
        "a-v3": {"n1", "n2"},
        "cid-s": set(),  # a stopped app's slug stays pinned: ps:start needs it
    }


# -- rule 7: a swarm of one node is today's single node ----------------------


def test_one_node_runs_exactly_what_the_single_node_reconciler_runs(tmp_path: Path) -> None:
    the_apps = apps(app("mybot", bot=1), app("site", web=2, worker=1), app("off", stopped=True))
    p = run([member("node1")], the_apps)
    settings = Settings(home=tmp_path, name="node1")
    assert set(p.nodes) == set(desired_instances(Snapshot(apps=the_apps), "node1", settings))
    assert set(p.nodes.values()) == {"node1"}
    assert not p.unplaced


def test_one_node_back_from_down_gets_everything_back() -> None:
    the_apps = apps(app("mybot", bot=2))
    down = run([member("node1", DOWN)], the_apps, {("mybot", "bot.1"): "node1"})
    assert down.nodes == {} and set(down.unplaced) == {("mybot", "bot.1"), ("mybot", "bot.2")}
    back = run([member("node1")], the_apps, down.nodes)
    assert back.nodes == {("mybot", "bot.1"): "node1", ("mybot", "bot.2"): "node1"}


# -- invariants over random swarms -------------------------------------------


def _random_swarm(rng: random.Random) -> tuple[list[Member], dict[str, App], dict]:
    members = [
        member(
            f"n{i}",
            rng.choice([UP, UP, UP, SUSPECT, DOWN]),
            memory_mb=rng.choice([0, 256, 512, 1024, 1536, 2048, 4096]),
            max_apps=rng.randint(0, 4),
            cpus=rng.choice([0.0, 0.5, 1.0, 2.0]),
            leaving=rng.random() < 0.1,
        )
        for i in range(rng.randint(0, 6))
    ]
    the_apps = apps(
        *(
            app(f"app{i}", stopped=rng.random() < 0.1, bot=rng.randint(0, 4), web=rng.randint(0, 2))
            for i in range(rng.randint(0, 7))
        )
    )
    names = [m.name for m in members] + ["ghost"]
    current = {}
    for name in [*the_apps, "destroyed"]:
        for n in range(1, rng.randint(1, 6)):
            if rng.random() < 0.5:
                current[(name, f"bot.{n}")] = rng.choice(names)
    return members, the_apps, current


def _counts(p: Placement) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in p.nodes.values():
        out[node] = out.get(node, 0) + 1
    return out


@pytest.mark.parametrize("seed", range(300))
def test_invariants_hold_for_random_swarms(seed: int) -> None:
    rng = random.Random(seed)
    members, the_apps, current = _random_swarm(rng)
    p = place(members, the_apps, current, NOW, MB)
    by_name = {m.name: m for m in members}
    state = {m.name: member_state(m, NOW) for m in members}
    wanted = wanted_instances(the_apps, MB)

    # Only wanted instances, each either placed or unplaced with a reason.
    assert set(p.nodes) <= set(wanted)
    assert set(p.nodes) | set(p.unplaced) == set(wanted)
    assert not set(p.nodes) & set(p.unplaced)
    assert all(p.unplaced.values())

    for key, node in p.nodes.items():
        kept = current.get(key) == node
        # Nothing lands on a non-up or leaving member; a suspect one only keeps its own.
        if not kept:
            assert state[node] == UP and not by_name[node].leaving
        assert state[node] in (UP, SUSPECT)
        if state[node] == SUSPECT:
            assert kept
    # Stability: what ran on an up or suspect member stays, unless moved off a leaving one.
    for key, node in current.items():
        if key in wanted and state.get(node) in (UP, SUSPECT):
            assert p.nodes[key] == node or (by_name[node].leaving and p.handoffs[key] == node)

    # Capacity: what came new to a member fits its shares (what ran there before
    # may exceed shares lowered since); free_mb adds up.
    for name, m in by_name.items():
        here = {k for k, n in p.nodes.items() if n == name}
        new = {k for k in here if current.get(k) != name}
        used = sum(wanted[k] for k in here)
        assert p.free_mb[name] == m.memory_mb - used
        if new:
            assert used <= m.memory_mb
        apps_here, apps_before = {k[0] for k in here}, {k[0] for k in here - new}
        if apps_here - apps_before:
            assert len(apps_here) <= m.max_apps

    # Every placeable instance is placed: no up member has room for an unplaced one.
    for key in p.unplaced:
        for name, m in by_name.items():
            here = {k for k, n in p.nodes.items() if n == name}
            apps_here = {k[0] for k in here}
            room = p.free_mb[name] >= wanted[key] and (
                key[0] in apps_here or len(apps_here) < m.max_apps
            )
            assert not (state[name] == UP and not m.leaving and room), (key, name)

    # Same input, same output, whatever the order of the input.
    again = place(
        rng.sample(members, len(members)),
        dict(rng.sample(list(the_apps.items()), len(the_apps))),
        dict(rng.sample(list(current.items()), len(current))),
        NOW,
        MB,
    )
    assert again == p


@pytest.mark.parametrize("seed", range(100))
def test_holder_invariants_for_random_swarms(seed: int) -> None:
    rng = random.Random(seed)
    members, the_apps, current = _random_swarm(rng)
    p = place(members, the_apps, current, NOW, MB)
    slugs = slugs_in_use(the_apps, p.nodes, keep=3)
    eligible = {m.name for m in members if member_state(m, NOW) == UP and not m.leaving}
    r = rng.randint(1, 4)
    names = [m.name for m in members]
    held = {cid: rng.sample(names, min(2, len(names))) for cid in slugs}
    out = holders(members, slugs, held, NOW, r, free_mb=p.free_mb)
    assert set(out) == set(slugs)
    for cid, nodes in out.items():
        assert len(nodes) == min(r, len(eligible)) == len(set(nodes))
        assert set(nodes) <= eligible
        keepable = set(held.get(cid, ())) & eligible
        if len(keepable) <= r:
            assert keepable <= set(nodes)
    assert holders(rng.sample(members, len(members)), slugs, held, NOW, r, p.free_mb) == out


def test_a_release_being_deployed_is_placed_and_pinned_with_the_current_one() -> None:
    """A first push's release is not current until it runs: it is placed all the
    same; a later one's slug is pinned beside the current one's (both run)."""
    first = app("fresh", web=1)
    first.current, first.deploying = None, 1
    assert wanted_instances(apps(first), 300) == {("fresh", "web.1"): 300}
    assert run([member("n1")], apps(first)).nodes == {("fresh", "web.1"): "n1"}
    a = app("a", web=1)
    a.releases = [
        Release(v, f"a-v{v}", "procfile", "img", {"web": "x"}, "c", "ann", "t", "")
        for v in (1, 2, 3)
    ]
    a.current, a.deploying = 1, 3
    assert slugs_in_use(apps(a), {("a", "web.1"): "n1"}, keep=0) == {
        "a-v1": set(),
        "a-v3": {"n1"},
    }
