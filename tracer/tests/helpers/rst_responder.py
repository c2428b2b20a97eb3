#!/usr/bin/env python3
"""Plays a *remote* host that refuses TCP connections, for the remote_refused scenario.

Run inside a network namespace, on the veth end IFACE, for the address TARGET_IP that no
interface of that namespace owns: the namespace's kernel therefore neither answers nor
refuses (it just discards a packet not addressed to it), and this program answers every SYN
to TARGET_IP:PORT with an RST+ACK written straight onto the wire (AF_PACKET). To the client
this is exactly an RST from another machine: no tcp_send_reset, no NO_SOCKET drop and no
netfilter drop happens on the tracing host for it.

Usage: rst_responder.py IFACE TARGET_IP PORT SECONDS
Prints {"pid": N} then {"ready": true}, then one {"rst_sent": N} line at exit. Bounded in time
and in the number of answers.
"""
import json
import os
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
MAX_ANSWERS = 1000


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rst_for(frame: bytes, target: bytes, port: int):
    if len(frame) < 14 + 20 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 6 or ip[16:20] != target:
        return None
    tcp = ip[ihl:]
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    flags = tcp[13]
    if dport != port or not (flags & 0x02) or (flags & 0x10):
        return None  # only bare SYNs
    client = ip[12:16]
    tcp_hdr = struct.pack("!HHIIBBHHH", port, sport, 0, (seq + 1) & 0xFFFFFFFF, 5 << 4, 0x14, 0, 0, 0)
    pseudo = target + client + struct.pack("!BBH", 0, 6, len(tcp_hdr))
    tcp_hdr = tcp_hdr[:16] + struct.pack("!H", checksum(pseudo + tcp_hdr)) + tcp_hdr[18:]
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp_hdr), 0, 0x4000, 64, 6, 0, target, client)
    ip_hdr = ip_hdr[:10] + struct.pack("!H", checksum(ip_hdr)) + ip_hdr[12:]
    eth = frame[6:12] + frame[0:6] + b"\x08\x00"
    return eth + ip_hdr + tcp_hdr


def main():
    iface, target_ip, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    target = socket.inet_aton(target_ip)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    print(json.dumps({"ready": True}), flush=True)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < MAX_ANSWERS:
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        reply = rst_for(frame, target, port)
        if reply:
            s.send(reply)
            sent += 1
    print(json.dumps({"rst_sent": sent}), flush=True)


if __name__ == "__main__":
    main()
