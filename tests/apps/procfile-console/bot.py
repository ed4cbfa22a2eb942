import time

print("bot up", flush=True)
while True:  # dies of SIGTERM, as most bots do
    time.sleep(1)
