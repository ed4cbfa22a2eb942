import os
import sys
import time

print("python says", sys.version.split()[0], "in", os.environ["PC_RELEASE"], flush=True)
while True:
    time.sleep(1)
