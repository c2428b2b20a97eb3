#!/usr/bin/env python3
"""Listeners that die in the ways the lifecycle tests need (tests/lifecycle.rs).

Prints {"pid": N} first, then {"listening": ...}; every wait is bounded.
  exit-code --port P --code N --after S   listen on 127.0.0.1:P, exit with code N after S s
  hog --port P --mb M --cgroup NAME       listen, wait (bounded) until the test moved it into the
                                          memory cgroup NAME, then allocate M MiB (the OOM killer
                                          ends it inside a smaller limit). `ip netns exec` mounts
                                          its own /sys, so the test does the move from outside.
"""
import argparse
import json
import os
import socket
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def listen(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port))
    l.listen(16)
    emit({"listening": f"127.0.0.1:{port}"})
    return l


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exit-code")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--code", type=int, required=True)
    e.add_argument("--after", type=float, default=0.5)
    h = sub.add_parser("hog")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--mb", type=int, default=400)
    h.add_argument("--cgroup", required=True)
    a = p.parse_args()
    emit({"pid": os.getpid()})
    if a.cmd == "exit-code":
        _l = listen(a.port)
        time.sleep(min(a.after, 30))
        os._exit(a.code)
    _l = listen(a.port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/self/cgroup") as f:
            if a.cgroup in f.read():
                break
        time.sleep(0.05)
    emit({"confined": True})
    chunks = []
    for _ in range(min(a.mb, 4096)):
        chunks.append(bytearray(1024 * 1024))  # touched: bytearray zero-fills
    emit({"survived": True})
    time.sleep(1)


if __name__ == "__main__":
    main()
