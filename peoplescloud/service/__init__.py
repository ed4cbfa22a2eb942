"""The node as the edges (SSH, the router, the dashboard) see it: the app
service, `gitserver.service.NodeService`.

Every method checks who may do what, then changes the state (through
`state.change`) and lets the reconciler make the world match. One class per
noun, composed here.
"""

from peoplescloud.service.apps import AppCommands
from peoplescloud.service.config import ConfigCommands
from peoplescloud.service.dashboard import DashboardCommands
from peoplescloud.service.domains import DomainCommands
from peoplescloud.service.events import EventCommands
from peoplescloud.service.processes import ProcessCommands
from peoplescloud.service.quotas import QuotaCommands
from peoplescloud.service.releases import ReleaseCommands
from peoplescloud.service.run import RunCommands, merge
from peoplescloud.service.sharing import SharingCommands
from peoplescloud.service.users import UserCommands


class Node(
    AppCommands,
    ProcessCommands,
    ConfigCommands,
    ReleaseCommands,
    RunCommands,
    UserCommands,
    SharingCommands,
    EventCommands,
    QuotaCommands,
    DashboardCommands,
    DomainCommands,
):
    """The app service of one node (alone or in a swarm: see `peoplescloud.cluster`)."""


__all__ = ["Node", "merge"]
