"""detect -> build -> release, like buildpacks.

`build(src, out, cache, executor, say)` turns a checked-out tree into a slug
directory and says which process types it has. Each app kind is a small module
in `builder.kinds` with `detect`, `build`, `default_processes`; the order they
are tried in is `builder.kinds.ORDER`.
"""
