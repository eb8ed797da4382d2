#!/usr/bin/env python3
"""Measures status latency against a running daemon; called by run.sh."""

import argparse
import json
import os
import subprocess
import sys
import time


def percentiles(samples):
    s = sorted(samples)

    def pick(q):
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    return pick(0.5), pick(0.99)


def timed(calls, fn):
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return percentiles(out)


def run(argv, cwd=None):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--address", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--daemon-pid", type=int, required=True)
    ap.add_argument("--services", type=int, required=True)
    ap.add_argument("--calls", type=int, required=True)
    a = ap.parse_args()

    # Wait until every service runs, so the data is the steady state.
    deadline = time.time() + 60
    while True:
        out = subprocess.run([a.ctl, "status", "--json"], cwd=a.project, capture_output=True, text=True)
        if out.returncode == 0:
            states = [s["state"] for s in json.loads(out.stdout)[0]["services"]]
            if len(states) == a.services and all(s in ("running", "healthy") for s in states):
                break
        if time.time() > deadline:
            sys.exit("services did not all start: %s" % out.stdout[:500])
        time.sleep(0.2)

    busctl = ["busctl", "--address=" + a.address, "call"]
    managed = busctl + ["dev.locald.Locald1", "/dev/locald/Locald1",
                        "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"]
    floor = busctl + ["org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames"]

    # Warm up caches (page cache, the daemon's allocator) before measuring.
    for _ in range(5):
        run([a.ctl, "status", "--json"], cwd=a.project)
        run(managed)
        run(floor)

    rows = []
    rows.append(("locald-ctl status --json (process)", timed(a.calls, lambda: run([a.ctl, "status", "--json"], cwd=a.project))))
    rows.append(("busctl GetManagedObjects (process)", timed(a.calls, lambda: run(managed))))
    rows.append(("busctl ListNames: bus floor (process)", timed(a.calls, lambda: run(floor))))

    try:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        conn = open_dbus_connection(bus=a.address)
        om = DBusAddress("/dev/locald/Locald1", bus_name="dev.locald.Locald1",
                         interface="org.freedesktop.DBus.ObjectManager")
        dbus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus",
                           interface="org.freedesktop.DBus")
        for _ in range(5):
            conn.send_and_get_reply(new_method_call(om, "GetManagedObjects"))
        rows.append(("GetManagedObjects round trip (in-process)",
                     timed(a.calls, lambda: conn.send_and_get_reply(new_method_call(om, "GetManagedObjects")))))
        rows.append(("ListNames round trip: bus floor (in-process)",
                     timed(a.calls, lambda: conn.send_and_get_reply(new_method_call(dbus, "ListNames")))))
    except ImportError:
        print("(jeepney missing: no in-process figures)", file=sys.stderr)

    print("status of %d services, %d calls each" % (a.services, a.calls))
    print("%-46s %9s %9s" % ("", "p50 ms", "p99 ms"))
    for name, (p50, p99) in rows:
        print("%-46s %9.2f %9.2f" % (name, p50, p99))
    ctl = rows[0][1]
    fl = rows[2][1]
    print("ratio status / bus floor (process, p50): %.2f" % (ctl[0] / fl[0]))
    if len(rows) > 3:
        print("ratio GetManagedObjects / ListNames (in-process, p50): %.2f" % (rows[3][1][0] / rows[4][1][0]))
    rss = rss_kib(a.daemon_pid)
    print("daemon RSS: %.1f MiB" % (rss / 1024.0))
    ok_latency = ctl[1] < 10.0
    ok_rss = rss < 30 * 1024
    print("targets: status p99 < 10 ms: %s; RSS < 30 MiB: %s"
          % ("met" if ok_latency else "MISSED", "met" if ok_rss else "MISSED"))


if __name__ == "__main__":
    main()
