"""The node: daemon, settings, state, store, runtimes, the `pc` CLI."""
