import sys
import time

import six

print "py2 bot on", sys.version.split()[0], "with six", six.__version__
sys.stdout.flush()
while True:
    time.sleep(1)
