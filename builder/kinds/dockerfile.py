"""Dockerfile apps: the tree's own `Dockerfile`, built by the Docker engine into
the app's image. Tried after Python and Node, so an app of theirs that also
ships a Dockerfile keeps its buildpack-style build, unless app.json says
`"stack": "container"` (Heroku's word for "build my Dockerfile"); tried before
the bare Procfile kind, whose types then run in the image.

The build itself is `builder.image.build_app`: the image is the app, so there
is no slug to install into (see `builder.build`).
"""

from __future__ import annotations

from pathlib import Path

from builder.errors import BuildError
from builder.jsonfile import read_json

NAME = "Dockerfile"
KIND = "dockerfile"
LOOKS_FOR = "Dockerfile"
NOTHING_TO_RUN = "give the Dockerfile a CMD or an ENTRYPOINT, or add a Procfile"
MARKERS = ("Dockerfile", "app.json")
CONTAINER_STACK = "container"  # app.json's "stack" that asks for the Dockerfile


def detect(tree: Path) -> bool:
    return (tree / "Dockerfile").is_file()


def default_processes(tree: Path) -> dict[str, str]:
    return {}  # the image's CMD, known once it is built


def wanted(tree: Path) -> bool:
    """Whether app.json asks for the Dockerfile build (`"stack": "container"`),
    whatever else the tree holds. Only that key is read here."""
    path = tree / "app.json"
    if not path.is_file():
        return False
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("stack") != CONTAINER_STACK:
        return False
    if not detect(tree):
        raise BuildError(
            'app.json asks for "stack": "container" but the tree has no Dockerfile at its top'
        )
    return True
