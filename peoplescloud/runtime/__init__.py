"""Runtimes start, stop, watch and re-adopt process instances.

Two implementations behind one contract (`base.Runtime`): `docker` and
`process`. `open_runtime` picks one from the settings.
"""
