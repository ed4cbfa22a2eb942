"""App kinds, one module each, like buildpacks.

Every kind module has:
- `NAME` ("Python"), `KIND` ("python"), `LOOKS_FOR` (what detection looks for,
  for the error shown when no kind matches), `MARKERS` (files named in the
  detection message), `NOTHING_TO_RUN` (a hint for when no process type is found);
- `detect(tree) -> bool`: is this app mine;
- `default_processes(tree) -> dict[str, str]`: process types when there is no Procfile;
- `build(tree, out, cache, executor, say)`: install dependencies into the slug `out`.

They are tried in the order of `ORDER`; the first that says "mine" builds the app.
`dockerfile` comes after the language kinds: a Python or Node app that ships a
Dockerfile keeps its slug build (unless app.json asks for the Dockerfile), but
a Dockerfile beside a bare Procfile is built, the Procfile's types run in its
image. It builds an image rather than a slug (see builder.image).
"""

from builder.kinds import dockerfile, node, procfile, python

ORDER = [python, node, dockerfile, procfile]

__all__ = ["ORDER"]
