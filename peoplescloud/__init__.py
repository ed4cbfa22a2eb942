"""People's Cloud: what one node needs. It imports nothing from `swarm/`."""
