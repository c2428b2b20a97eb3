#!/usr/bin/env python3
"""Produce, for real, the kernel situations tracer explains (used by tests/scenarios.rs).

Run inside a network namespace: `ip netns exec NS python3 net.py <subcommand> ...`.
Every subcommand prints JSON lines on stdout, flushed at once; the first is always
`{"pid": N}` (this process), so the test knows which PID tracer must name.
Only the standard library. Every loop is bounded in count and in time.

Subcommands
  tcp-listen   --host H --port P [--backlog N] [--accept] [--lifetime S]
               listen on H:P; print {"listening": ...}; with --accept, accept and close
               connections; stop (close, exit 0) on a "stop" line or EOF on stdin, or when
               the lifetime ends. SIGKILL it to make a crashed listener.
  tcp-connect  --host H --port P --count N [--nonblock --hold S] [--timeout S] [--interval S]
               N connects; blocking: one result line per attempt; non-blocking: all sockets
               are opened, held S seconds, then each socket's final state is reported.
  unix-listen  --path P [--backlog N] [--mode OCTAL] [--accept] [--lifetime S]
  unix-connect --path P --count N [--nonblock] [--hold S] [--uid U --gid G]
               --uid/--gid: drop privileges (setgroups([]), setgid, setuid) before connecting.
"""
import argparse
import errno
import json
import os
import select
import socket
import sys
import time

MAX_COUNT = 1000
MAX_LIFETIME = 600.0


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def errname(e):
    return errno.errorcode.get(e, str(e)) if e else "OK"


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def fmt_target(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def bounded(value, low, high, what):
    if not (low <= value <= high):
        raise SystemExit("%s must be in [%s, %s], got %s" % (what, low, high, value))
    return value


def serve(sock, accept, lifetime):
    """Wait for "stop"/EOF on stdin or the end of the lifetime; accept if asked. Returns
    how many connections were accepted."""
    deadline = time.monotonic() + lifetime
    accepted = 0
    sock.setblocking(False)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            emit({"lifetime_over": True})
            break
        rlist = [sys.stdin, sock] if accept else [sys.stdin]
        ready, _, _ = select.select(rlist, [], [], min(left, 0.5))
        if sys.stdin in ready:
            line = sys.stdin.readline()
            if line == "" or line.strip() == "stop":
                break
        if sock in ready:
            for _ in range(64):  # bounded drain of the accept queue
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                accepted += 1
                conn.close()
    return accepted


def cmd_tcp_listen(a):
    fam = family_of(a.host)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.host, a.port))
    s.listen(a.backlog)
    emit({"listening": fmt_target(a.host, a.port), "backlog": a.backlog})
    accepted = serve(s, a.accept, a.lifetime)
    s.close()
    emit({"closed": True, "accepted": accepted})


def cmd_unix_listen(a):
    try:
        os.unlink(a.path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(a.path)
    if a.mode is not None:
        os.chmod(a.path, int(a.mode, 8))
    s.listen(a.backlog)
    st = os.stat(a.path)
    emit({"listening": "unix:" + a.path, "backlog": a.backlog,
          "mode": "%o" % (st.st_mode & 0o7777), "owner_uid": st.st_uid})
    accepted = serve(s, a.accept, a.lifetime)
    s.close()
    emit({"closed": True, "accepted": accepted})


def final_state(s):
    """After a non-blocking connect: connected, pending (still SYN_SENT) or failed."""
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        return errname(err)
    try:
        s.getpeername()
        return "connected"
    except OSError:
        return "pending"


def summarize(results):
    out = {}
    for r in results:
        out[r] = out.get(r, 0) + 1
    return out


def cmd_tcp_connect(a):
    fam = family_of(a.host)
    addr = (a.host, a.port)
    results = []
    socks = []
    for i in range(a.count):
        s = socket.socket(fam, socket.SOCK_STREAM)
        if a.nonblock:
            s.setblocking(False)
            e = s.connect_ex(addr)
            res = errname(e)
            socks.append(s)
        else:
            s.settimeout(a.timeout)
            try:
                s.connect(addr)
                res = "OK"
            except socket.timeout:
                res = "TIMEOUT"
            except OSError as ex:
                res = errname(ex.errno)
            s.close()
        results.append(res)
        emit({"attempt": i, "result": res})
        if a.interval:
            time.sleep(a.interval)
    done = {"done": True, "count": a.count, "results": summarize(results)}
    if a.nonblock:
        time.sleep(a.hold)
        finals = [final_state(s) for s in socks]
        done["final"] = summarize(finals)
        for s in socks:
            s.close()
    emit(done)


def cmd_unix_connect(a):
    if a.gid is not None:
        os.setgroups([])
        os.setgid(a.gid)
    if a.uid is not None:
        os.setuid(a.uid)
    emit({"uid": os.getuid(), "gid": os.getgid()})
    results = []
    socks = []
    for i in range(a.count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if a.nonblock:
            s.setblocking(False)
        else:
            s.settimeout(5.0)
        try:
            s.connect(a.path)
            res = "OK"
        except socket.timeout:
            res = "TIMEOUT"
        except OSError as ex:
            res = errname(ex.errno)
        if res == "OK":
            socks.append(s)  # keep accepted-in-queue connections open: they fill the queue
        else:
            s.close()
        results.append(res)
        emit({"attempt": i, "result": res})
    if a.hold:
        time.sleep(a.hold)
    for s in socks:
        s.close()
    emit({"done": True, "count": a.count, "results": summarize(results)})


def main():
    emit({"pid": os.getpid()})
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)

    tl = sub.add_parser("tcp-listen")
    tl.add_argument("--host", required=True)
    tl.add_argument("--port", type=int, required=True)
    tl.add_argument("--backlog", type=int, default=128)
    tl.add_argument("--accept", action="store_true")
    tl.add_argument("--lifetime", type=float, default=120.0)

    tc = sub.add_parser("tcp-connect")
    tc.add_argument("--host", required=True)
    tc.add_argument("--port", type=int, required=True)
    tc.add_argument("--count", type=int, default=1)
    tc.add_argument("--nonblock", action="store_true")
    tc.add_argument("--hold", type=float, default=0.0)
    tc.add_argument("--timeout", type=float, default=5.0)
    tc.add_argument("--interval", type=float, default=0.0)

    ul = sub.add_parser("unix-listen")
    ul.add_argument("--path", required=True)
    ul.add_argument("--backlog", type=int, default=128)
    ul.add_argument("--mode", default=None)
    ul.add_argument("--accept", action="store_true")
    ul.add_argument("--lifetime", type=float, default=120.0)

    uc = sub.add_parser("unix-connect")
    uc.add_argument("--path", required=True)
    uc.add_argument("--count", type=int, default=1)
    uc.add_argument("--nonblock", action="store_true")
    uc.add_argument("--hold", type=float, default=0.0)
    uc.add_argument("--uid", type=int, default=None)
    uc.add_argument("--gid", type=int, default=None)

    a = p.parse_args()
    if hasattr(a, "count"):
        bounded(a.count, 1, MAX_COUNT, "--count")
    for name in ("lifetime", "hold", "timeout", "interval"):
        if hasattr(a, name):
            bounded(getattr(a, name), 0.0, MAX_LIFETIME, "--" + name)
    {"tcp-listen": cmd_tcp_listen, "tcp-connect": cmd_tcp_connect,
     "unix-listen": cmd_unix_listen, "unix-connect": cmd_unix_connect}[a.cmd](a)


if __name__ == "__main__":
    main()
