"""What makes a node a member of a swarm: the swarm's id and name, its two
secrets, and the consensus addresses it knew when it joined. Kept in
`$PC_HOME/swarm.json` (mode 0600); absent on a lone node.

- `secret` signs node-to-node requests (swarm/peer.py) and encrypts the Raft
  traffic (pysyncobj's password);
- `swarm_key` makes kubo a private network: only members exchange blocks.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SwarmIdentity:
    id: str
    name: str
    secret: str  # 64 hex characters
    swarm_key: str  # 64 hex characters
    partners: list[str] = field(default_factory=list)  # Raft "host:port" of the others
    # Until admitted: the peer API "host:port" of the member that let it in. Raft
    # commits a new member only once that member runs, so the new daemon asks the
    # sponsor to add it after starting, then forgets the sponsor.
    sponsor: str = ""
    sponsor_name: str = ""  # its node name: peer requests name their recipient

    @classmethod
    def create(cls, name: str) -> SwarmIdentity:
        return cls(
            id=f"swarm-{uuid.uuid4().hex[:12]}",
            name=name,
            secret=secrets.token_hex(32),
            swarm_key=secrets.token_hex(32),
        )

    @classmethod
    def load(cls, path: Path) -> SwarmIdentity | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, path)

    @property
    def secret_bytes(self) -> bytes:
        return bytes.fromhex(self.secret)
