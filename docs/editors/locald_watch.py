#!/usr/bin/env python3
"""A minimal locald client for editors: lists every service, then prints
state changes live.

It uses only jeepney, a pure-Python D-Bus library (`pip install jeepney`, or
Debian's `python3-jeepney`), and the public interface described in
docs/dbus/: one ObjectManager.GetManagedObjects call for the current state,
then PropertiesChanged and InterfacesAdded/Removed signals. Nothing in it is
specific to locald beyond the bus name, the object path and the property
names.

    python3 locald_watch.py                 # the session bus
    python3 locald_watch.py --address unix:path=/run/user/1000/bus
    python3 locald_watch.py --list          # print the services and exit

Output, one line each:

    shop/web running pid=48240
    shop/web State failed ExitStatus=3
"""

import argparse
import sys

from jeepney import DBusAddress, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import Proxy, open_dbus_connection

BUS_NAME = "dev.locald.Locald1"
ROOT = "/dev/locald/Locald1"
SERVICE = "dev.locald.Service1"


def plain(value):
    """jeepney gives variants as (signature, value); keep the value."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[1]
    return value


class Services:
    """What we know of each service object: project/service name and state."""

    def __init__(self):
        self.by_path = {}

    def add(self, path, props):
        name = "%s/%s" % (plain(props["Project"]), plain(props["Name"]))
        self.by_path[path] = name
        pid = plain(props["MainPID"])
        line = "%s %s" % (name, plain(props["State"]))
        if pid:
            line += " pid=%d" % pid
        print(line, flush=True)

    def name(self, path):
        return self.by_path.get(path, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="SESSION", help="D-Bus address (default: session bus)")
    parser.add_argument("--list", action="store_true", help="print the services and exit")
    args = parser.parse_args()

    try:
        conn = open_dbus_connection(bus=args.address)
    except (OSError, KeyError) as e:
        print("cannot connect to the bus: %s" % e, file=sys.stderr)
        return 1

    # Subscribe before reading the state, so no change falls in between.
    # The bus matches the well-known sender; jeepney filters locally by path.
    bus_rule = MatchRule(type="signal", sender=BUS_NAME, path_namespace=ROOT)
    local_rule = MatchRule(type="signal", path_namespace=ROOT)
    Proxy(message_bus, conn).AddMatch(bus_rule)

    with conn.filter(local_rule, bufsize=1024) as queue:
        manager = DBusAddress(ROOT, bus_name=BUS_NAME, interface="org.freedesktop.DBus.ObjectManager")
        reply = conn.send_and_get_reply(new_method_call(manager, "GetManagedObjects"))
        if reply.header.message_type.name == "error":
            print("cannot reach locald: %s" % (reply.body,), file=sys.stderr)
            return 1
        services = Services()
        for path, interfaces in sorted(reply.body[0].items()):
            if SERVICE in interfaces:
                services.add(path, interfaces[SERVICE])
        if args.list:
            return 0
        print("-- watching", flush=True)

        while True:
            msg = conn.recv_until_filtered(queue)
            member = msg.header.fields.get(3)  # HeaderFields.member
            path = msg.header.fields.get(1)  # HeaderFields.path
            if member == "PropertiesChanged":
                interface, changed, _ = msg.body
                if interface != SERVICE:
                    continue
                parts = []
                if "State" in changed:
                    parts.append("State %s" % plain(changed["State"]))
                for key in sorted(changed):
                    if key not in ("State", "LastBuild"):
                        parts.append("%s=%s" % (key, plain(changed[key])))
                print("%s %s" % (services.name(path), " ".join(parts)), flush=True)
            elif member == "InterfacesAdded":
                obj, interfaces = msg.body
                if SERVICE in interfaces:
                    services.add(obj, interfaces[SERVICE])
            elif member == "InterfacesRemoved":
                obj, interfaces = msg.body
                if SERVICE in interfaces:
                    print("%s removed" % services.name(obj), flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
