"""A python-socketio client as a Python integration would run one: it joins a room, keeps the
last id it received, and when it reconnects by itself it joins again after that id.

Prints one line per step for the Rust test that drives it:
  CONNECTED / JOINED <ack JSON> / N <id> <type> / DISCONNECTED <reason>
"""
import argparse
import json
import sys
import threading

import socketio


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--transport", choices=["websocket", "polling"], required=True)
    parser.add_argument("--room", required=True)
    args = parser.parse_args()

    # The library's defaults (reconnection on, unlimited attempts), with short delays so that
    # the test's bounded waits are met.
    client = socketio.Client(reconnection_delay=0.2, reconnection_delay_max=1)
    last = {"id": None}

    # Callbacks run on the client's threads: one whole line at a time.
    lock = threading.Lock()

    def say(*words):
        with lock:
            sys.stdout.write(" ".join(str(w) for w in words) + "\n")
            sys.stdout.flush()

    def joined(ack):
        say("JOINED", json.dumps(ack))

    @client.event
    def connect():
        say("CONNECTED")
        argument = args.room if last["id"] is None else {"room": args.room, "after": last["id"]}
        client.emit("join-room", argument, callback=joined)

    @client.event
    def disconnect(reason=None):
        say("DISCONNECTED", reason)

    @client.on("notification")
    def notification(payload):
        last["id"] = payload["id"]
        say("N", payload["id"], payload["type"])

    client.connect(args.base, transports=[args.transport], wait_timeout=10)
    client.wait()


if __name__ == "__main__":
    sys.exit(main())
