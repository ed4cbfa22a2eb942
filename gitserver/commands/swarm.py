"""`swarm:nodes`, and the node table that `pc swarm status` prints too."""

from __future__ import annotations

from collections.abc import Sequence

from gitserver.commands.base import Args, Context, table
from gitserver.service import NodeRow


async def nodes(ctx: Context, args: Args) -> int:
    args.done()
    for line in node_table(await ctx.call(ctx.service.swarm_nodes)):
        ctx.out(line)
    return 0


def node_table(rows: Sequence[NodeRow]) -> list[str]:
    """The members of a swarm (`swarm:nodes` and `pc swarm status`)."""
    return table(
        ["NODE", "STATE", "ADDRESS", "SHARES", "USES", "INSTANCES"],
        [(r.name, r.state, r.address, r.shares, r.uses, str(r.instances)) for r in rows],
    )
