"""One member of the swarm's Raft group: the glue around pysyncobj.

pysyncobj does the consensus (election, log replication, journal, snapshots,
membership changes); this module gives it the shape the swarm needs:

- a `Machine` (apply / dump / load) holds the replicated data, so nothing here
  knows what the state means;
- node-to-node traffic is encrypted and authenticated with the swarm secret
  (pysyncobj's `password`: Fernet with a key derived from it); a member with
  another secret is disconnected on its first message;
- a command is sent only while this member sees a majority and the leader, is
  sent again while its outcome is unknown (the leader changed before answering),
  and is applied once all the same (each carries an id); it ends applied (its
  result is returned) or in `NoQuorum`: "nothing was changed", or, if the swarm
  went silent after accepting it, a message that says it may still take effect;
- each change is sent to the followers at once (not at the next heartbeat):
  a change is agreed in milliseconds on a LAN;
- ticks run on a thread of our own, so the node lives until `close()` and not
  only as long as the thread that created it (pysyncobj's auto-tick thread dies
  with its creator thread).

Callbacks of the machine (`apply`, `load`) run on that raft thread.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pysyncobj.tcp_server
import pysyncobj.transport
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.syncobj import SyncObjException
from pysyncobj.tcp_connection import TcpConnection

from peoplescloud.errors import ConfigError, PCError, UsageError

log = logging.getLogger(__name__)

# Failures after which the command is known not to be in the log: safe to try again.
_NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.REQUEST_DENIED,  # membership: another change (or the new leader's no-op) pending
}
_TIMEOUT = "timeout"  # our own outcome for "no answer before the deadline"
_TICK = 0.05  # longest wait for socket events in one tick
_REMEMBERED = 1000  # results kept to answer a command sent twice


Callback = Callable[[Any, Any], None]  # pysyncobj's (result, FAIL_REASON)


# --- pysyncobj's reads, bounded: the one patch of pysyncobj ---------------------
# pysyncobj's TcpConnection reads all a socket has before parsing, and trusts the
# 4-byte length in front of a message (up to 2 GB): junk streamed at the raft
# port was buffered without end, before anything was decrypted, and the raft
# thread kept reading it instead of ticking (commits failed even in a one-node
# swarm). No SyncObjConf option bounds that (`recvBufferSize` is one recv's
# size). So this subclass, put in pysyncobj's place in the two modules that make
# connections, reads no further than the end of the next message, and drops a
# connection that announces a message bigger than _FIRST_MESSAGE before one of
# its messages decrypted with the swarm secret, or bigger than _MESSAGE after.
_FIRST_MESSAGE = 4096  # the first message is a 32-byte key (encrypted, compressed)
_MESSAGE = 64 * 1024 * 1024  # one log entry or one 64 KB chunk of a full dump, and room


class _BoundedTcpConnection(TcpConnection):
    _pc_trusted = False  # a message decrypted with the swarm secret came in

    def _TcpConnection__processRead(self) -> bool:
        """Read once; whether to read again (pysyncobj loops while this says so)."""
        if self._pc_whole_message():
            return False  # parse it first: the socket keeps the rest
        if not TcpConnection._TcpConnection__processRead(self):
            return False
        size = self._pc_next_size()
        if size is None:
            return True
        most = _MESSAGE if self._pc_trusted else _FIRST_MESSAGE
        if not 0 <= size <= most:
            log.warning("raft: dropped a connection announcing a %d-byte message", size)
            self.disconnect()
            return False
        return not self._pc_whole_message()

    def _TcpConnection__processParseMessage(self) -> Any:
        message = TcpConnection._TcpConnection__processParseMessage(self)
        if message is not None:
            self._pc_trusted = True  # it decrypted (pysyncobj disconnects otherwise)
        return message

    def _pc_next_size(self) -> int | None:
        buffered: bytes = self._TcpConnection__readBuffer
        return struct.unpack("i", buffered[:4])[0] if len(buffered) >= 4 else None

    def _pc_whole_message(self) -> bool:
        size = self._pc_next_size()
        return size is not None and len(self._TcpConnection__readBuffer) >= 4 + size


pysyncobj.transport.TcpConnection = _BoundedTcpConnection  # outgoing connections
pysyncobj.tcp_server.TcpConnection = _BoundedTcpConnection  # incoming ones


class NoQuorum(PCError):
    """Fewer than a majority of the swarm's members answer: changes cannot be agreed."""


class Conflict(PCError):
    """Another member changed the same thing first: nothing was changed here."""


@dataclass(frozen=True)
class RaftTimings:
    """How fast the group notices things, in seconds. The defaults suit machines on
    a LAN or a good internet link (round trips well under 100 ms); tests on
    loopback use much shorter ones. A new leader is elected within about
    `election_max` of the last one's death: a member's next renewal after that
    is agreed before its instances would be stopped (see SwarmSettings), so a
    leader that dies takes no other member's instances down. Not
    shorter: a member starved of CPU for longer than `election_min` stands
    for election and stalls every commit meanwhile."""

    heartbeat: float = 0.15  # leader -> followers
    election_min: float = 0.75  # a follower without heartbeats waits this ...
    election_max: float = 1.5  # ... to this before it stands for election
    connection_timeout: float = 3.0  # a silent connection is dead after this
    reconnect: float = 1.0  # retry period for a lost partner
    leader_fallback: float = 5.0  # a leader without a majority steps down after this
    commit_timeout: float = 5.0  # default wait for a change to be agreed


@dataclass(frozen=True)
class RaftStatus:
    """The group as this member sees it."""

    address: str
    leader: str | None  # last known leader (can be stale on an isolated member)
    members: dict[str, bool]  # address -> connected to this member (self: True)
    has_quorum: bool
    term: int
    commit_index: int
    last_applied: int


class Machine(Protocol):
    """The replicated data. `apply` must be deterministic: every member applies the
    same commands in the same order and must reach the same data and result."""

    def apply(self, command: Any) -> Any: ...

    def dump(self) -> Any:
        """All the data, picklable: written to the full dump file and sent to
        members too far behind to catch up from the log."""

    def load(self, data: Any) -> None:
        """Replace all the data with a `dump()`."""


class _Consumer(SyncObjConsumer):
    """pysyncobj's view of a Machine: one replicated method, and the dump hooks.

    Each command carries an id, and the results of the last `_REMEMBERED` ones are
    kept (replicated too): a command sent again after an unknown outcome (the
    leader changed before answering) is applied once and answers like the first."""

    def __init__(self, machine: Machine) -> None:
        super().__init__()
        self.machine = machine
        self.results: OrderedDict[str, Any] = OrderedDict()

    @replicated
    def apply(self, command_id: str, command: Any) -> Any:
        if command_id not in self.results:
            self.results[command_id] = self.machine.apply(command)
            if len(self.results) > _REMEMBERED:
                self.results.popitem(last=False)
        return self.results[command_id]

    def _serialize(self) -> Any:
        return {"machine": self.machine.dump(), "results": list(self.results.items())}

    def _deserialize(self, data: Any) -> None:
        self.machine.load(data["machine"])
        self.results = OrderedDict(data["results"])


def _private(data_dir: Path) -> None:
    """Only the node's user reads the Raft files: the directory 0700 (which covers
    the dumps pysyncobj writes later), the files in it 0600."""
    data_dir.chmod(0o700)
    for f in data_dir.iterdir():
        if f.is_file():
            f.chmod(0o600)


class RaftNode:
    """This member of the group: starts listening on `address` at once and runs
    until `close()`. Its journal and full dump live in `data_dir`, so a restarted
    member recovers what it had and catches up from the others."""

    def __init__(
        self,
        address: str,
        partners: list[str],
        secret: str,
        data_dir: Path,
        machine: Machine,
        timings: RaftTimings = RaftTimings(),  # noqa: B008 (frozen, never mutated)
    ) -> None:
        if not secret:
            raise ConfigError("the swarm secret is empty: raft traffic would be unauthenticated")
        data_dir.mkdir(parents=True, exist_ok=True)
        _private(data_dir)  # the journal and dump hold every app's config vars
        self.address = address
        self._timings = timings
        self._consumer = _Consumer(machine)
        conf = SyncObjConf(
            password=secret,
            autoTick=False,
            bindAddress=address,  # pysyncobj would listen on 0.0.0.0 otherwise
            maxBindRetries=1,
            journalFile=str(data_dir / "raft.journal"),
            fullDumpFile=str(data_dir / "raft.dump"),
            useFork=False,  # forking a threaded daemon to write the dump is asking for deadlocks
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,  # send each change at once: ms, not a heartbeat
            commandsWaitLeader=False,  # fail at once without a leader, never queue for later
            appendEntriesPeriod=timings.heartbeat,
            raftMinTimeout=timings.election_min,
            raftMaxTimeout=timings.election_max,
            connectionTimeout=timings.connection_timeout,
            connectionRetryTime=timings.reconnect,
            leaderFallbackTimeout=timings.leader_fallback,
        )
        others = [p for p in partners if p != address]
        try:
            self._sync = SyncObj(address, others, conf, consumers=[self._consumer])
        except SyncObjException as e:
            raise ConfigError(f"cannot listen for raft traffic on {address}: {e}") from None
        _private(data_dir)  # the journal pysyncobj just made
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"raft {address}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._sync.doTick(_TICK)
            except Exception:  # one bad tick must not stop consensus for good
                log.exception("raft tick failed on %s", self.address)
                time.sleep(_TICK)
        self._sync.destroy()  # without autoTick this closes sockets and files right here

    def compact(self) -> None:
        """Write the full dump now and drop the journal before it (pysyncobj also does
        this by itself every 5 minutes or 5000 changes). Done on the next tick."""
        self._sync.forceLogCompaction()

    def close(self) -> None:
        """Leave the group's traffic (not its membership): stop ticking, close
        sockets and files. The journal stays for the next start."""
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # --- commands -----------------------------------------------------------

    def submit(self, command: Any, timeout: float | None = None) -> Any:
        """Replicate `command`; return what the machine's `apply` returned, once this
        member has applied it. Raises NoQuorum when no majority agrees in time."""
        command_id = uuid.uuid4().hex

        def start(callback: Callback) -> None:
            self._consumer.apply(command_id, command, callback=callback)

        return self._replicate(start, timeout, "change", done=lambda: False)

    def add_member(self, address: str, timeout: float | None = None) -> None:
        """Make `address` a member (it must be started with the current members as
        partners). Adding a member that already is one does nothing."""

        def start(callback: Callback) -> None:
            self._sync.addNodeToCluster(address, callback=callback)

        self._replicate(start, timeout, "membership change", done=lambda: address in self.members())

    def remove_member(self, address: str, timeout: float | None = None) -> None:
        """Take `address` out of the group: the majority is then counted without it."""
        if address == self.address:
            raise UsageError("a member cannot remove itself: ask another member to remove it")
        if address not in self.members():
            raise UsageError(f"{address} is not a member of the swarm")

        def start(callback: Callback) -> None:
            self._sync.removeNodeFromCluster(address, callback=callback)

        self._replicate(
            start, timeout, "membership change", done=lambda: address not in self.members()
        )

    def step_down(self, timeout: float = 10.0) -> None:
        """If this member leads, hand the lead to a caught-up follower: Raft never
        lets a leader be removed, so a leaving member steps down first."""
        deadline = time.monotonic() + timeout
        while self.leader() == self.address and time.monotonic() < deadline:
            self._sync.transferLeadership()
            time.sleep(0.5)

    def _replicate(
        self,
        start: Callable[[Callback], None],
        timeout: float | None,
        what: str,
        done: Callable[[], bool],
    ) -> Any:
        """Send a command until it is applied, or until the deadline. Sending again
        is safe: a command is applied once (ids), a membership change is checked
        (`done`) before each try."""
        limit = self._timings.commit_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        unsure = denied = False  # unsure: an earlier try may still be agreed later
        while not done():
            if self._can_submit():
                result, error = self._call(start, deadline)
                if error == FAIL_REASON.SUCCESS:
                    return result
                log.info("%s on %s not applied yet (pysyncobj: %s)", what, self.address, error)
                unsure = unsure or error not in _NOT_APPLIED
                denied = error == FAIL_REASON.REQUEST_DENIED
            if time.monotonic() >= deadline:
                raise self._failure(what, limit, unsure, denied)
            time.sleep(self._timings.heartbeat)
        return None

    def _failure(self, what: str, limit: float, unsure: bool, denied: bool) -> PCError:
        if unsure:
            return NoQuorum(
                f"the swarm did not confirm the {what} within {limit:g} s "
                f"({self._answering()}): it may still take effect when the swarm "
                "recovers; apps keep running wherever a majority of the swarm answers"
            )
        if denied:
            return Conflict(
                "the swarm refused the membership change: another one is still in progress; "
                "try again"
            )
        return NoQuorum(
            f"the swarm has no quorum ({self._answering()}): nothing was changed; "
            "apps keep running wherever a majority of the swarm answers"
        )

    def _can_submit(self) -> bool:
        """A majority is connected and so is the leader: pysyncobj drops a command
        forwarded to a leader it lost the connection to, without telling anyone."""
        leader = self._sync._getLeader()
        if leader is None or not self._sync.hasQuorum:
            return False
        return leader == self._sync.selfNode or self._sync.isNodeConnected(leader)

    @staticmethod
    def _call(start: Callable[[Callback], None], deadline: float) -> tuple[Any, Any]:
        """Run one pysyncobj call and wait for its callback: (result, FAIL_REASON)."""
        done = threading.Event()
        outcome: list[tuple[Any, Any]] = []

        def callback(result: Any, error: Any) -> None:
            outcome.append((result, error))
            done.set()

        start(callback)
        if not done.wait(max(deadline - time.monotonic(), 0.0)):
            return None, _TIMEOUT
        return outcome[0]

    # --- what this member sees ----------------------------------------------

    def members(self) -> list[str]:
        """Addresses of all members, this one first."""
        return [self.address, *sorted(n.address for n in self._sync.otherNodes)]

    def leader(self) -> str | None:
        """The last known leader's address (None during an election)."""
        node = self._sync._getLeader()
        return node.address if node is not None else None

    def status(self) -> RaftStatus:
        """Who is connected to this member, who leads, whether a majority answers."""
        members = {self.address: True}
        for node in sorted(self._sync.otherNodes, key=lambda n: n.address):
            members[node.address] = self._sync.isNodeConnected(node)
        return RaftStatus(
            address=self.address,
            leader=self.leader(),
            members=members,
            has_quorum=self._sync.hasQuorum,
            term=self._sync.raftCurrentTerm,
            commit_index=self._sync.raftCommitIndex,
            last_applied=self._sync.raftLastApplied,
        )

    def _answering(self) -> str:
        up = self.status().members.values()
        return f"{sum(up)} of {len(up)} members answer"
