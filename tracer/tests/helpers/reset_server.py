#!/usr/bin/env python3
"""An HTTP upstream that resets every connection, for the upstream_reset scenario
(tests/nginx/after_connect.rs): it accepts, waits DELAY seconds so the request has arrived,
then closes the socket without reading it. A close with unread data in the receive queue
makes the kernel answer with an RST instead of a FIN, as a server does that sheds load or
crashes out of its read loop.

Usage: reset_server.py PORT DELAY MAX_CONNS LIFETIME
Prints {"pid": N}, then {"listening": "127.0.0.1:PORT"}, then {"reset": K} after each close.
Bounded: at most MAX_CONNS connections, at most LIFETIME seconds.
"""
import json
import os
import socket
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    max_conns, lifetime = min(int(sys.argv[3]), 100), min(float(sys.argv[4]), 120.0)
    emit({"pid": os.getpid()})
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    listener.settimeout(0.2)
    emit({"listening": "127.0.0.1:%d" % port})
    deadline = time.monotonic() + lifetime
    resets = 0
    while resets < max_conns and time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        time.sleep(delay)
        conn.close()
        resets += 1
        emit({"reset": resets})
    listener.close()
    emit({"done": True, "resets": resets})


if __name__ == "__main__":
    main()
