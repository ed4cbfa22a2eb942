"""The one exception the builder raises."""


class BuildError(Exception):
    """The app cannot be built; `str(e)` is one line saying what to fix."""
