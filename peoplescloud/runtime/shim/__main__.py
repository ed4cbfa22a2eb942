"""`python -m peoplescloud.runtime.shim`: build pc-shim now (if not cached) and
print where it is; a one-line reason and exit code 1 when it cannot be built."""

import sys

from peoplescloud.errors import RuntimeFailure
from peoplescloud.runtime.shim import binary

try:
    print(binary())
except RuntimeFailure as e:
    print(f" !     {e}", file=sys.stderr)
    sys.exit(1)
