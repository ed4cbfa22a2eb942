"""A sample bot: says hello, then one line every few seconds."""

import time

import six

print(f"logged in as python-bot (six {six.__version__})", flush=True)
while True:
    time.sleep(5)
    print("still here", flush=True)
