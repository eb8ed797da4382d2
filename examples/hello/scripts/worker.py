"""A worker that polls the web service and reports what it sees."""
import os
import time
import urllib.request

target = os.environ.get("TARGET", "http://127.0.0.1:8787/")
while True:
    with urllib.request.urlopen(target, timeout=5) as r:
        body = r.read()
    print(f"fetched {target}: {r.status}, {len(body)} bytes", flush=True)
    time.sleep(2)
