"""IPFS for the swarm: kubo as a supervised child of a node, and a Store on its RPC API."""

from swarm.ipfs.api import KuboAPI, KuboError, KuboUnreachable
from swarm.ipfs.kubo import Kubo
from swarm.ipfs.store import IpfsStore

__all__ = ["IpfsStore", "Kubo", "KuboAPI", "KuboError", "KuboUnreachable"]
