#!/usr/bin/env python3
"""Readiness probes that speak each service's own protocol, with nothing to install.

  probe.py kafka HOST:PORT   -> a Kafka Metadata request (v0); exit 0 when a broker answers with itself
  probe.py cql HOST:PORT     -> CQL v4 STARTUP + `SELECT release_version FROM system.local`; prints it
"""
import socket
import struct
import sys


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def kafka(addr):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as s:
        client = b"probe"
        # Metadata v0 with an empty topic array: ask for brokers only... v0 treats empty as "all topics",
        # which is fine: we only read the broker list.
        body = struct.pack(">hhih", 3, 0, 1, len(client)) + client + struct.pack(">i", 0)
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", recv_exact(s, 4))[0]
        resp = recv_exact(s, size)
        corr, nbrokers = struct.unpack(">ii", resp[:8])
        if corr != 1 or nbrokers < 1:
            raise RuntimeError("no broker in metadata")
        print(f"kafka: {nbrokers} broker(s)")


def cql_frame(stream, opcode, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def cql_read(s):
    head = recv_exact(s, 9)
    _ver, _flags, _stream, opcode, length = struct.unpack(">BBhBi", head)
    return opcode, recv_exact(s, length)


def cql(addr):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as s:
        opts = b"CQL_VERSION"
        val = b"3.0.0"
        body = struct.pack(">H", 1) + struct.pack(">H", len(opts)) + opts + struct.pack(">H", len(val)) + val
        s.sendall(cql_frame(0, 0x01, body))
        op, _ = cql_read(s)
        if op != 0x02:
            raise RuntimeError(f"STARTUP answered opcode {op}")
        q = b"SELECT release_version FROM system.local"
        body = struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)
        s.sendall(cql_frame(1, 0x07, body))
        op, resp = cql_read(s)
        if op != 0x08:
            raise RuntimeError(f"QUERY answered opcode {op}: {resp[6:]!r}")
        kind, flags, ncols = struct.unpack(">iii", resp[:12])
        pos = 12
        if flags & 0x0001:  # global table spec
            for _ in range(2):
                n = struct.unpack(">H", resp[pos:pos + 2])[0]
                pos += 2 + n
        for _ in range(ncols):
            n = struct.unpack(">H", resp[pos:pos + 2])[0]
            pos += 2 + n
            pos += 2  # type id (varchar)
        nrows = struct.unpack(">i", resp[pos:pos + 4])[0]
        pos += 4
        if nrows < 1:
            raise RuntimeError("system.local has no row")
        n = struct.unpack(">i", resp[pos:pos + 4])[0]
        print("cassandra release_version:", resp[pos + 4:pos + 4 + n].decode())


if __name__ == "__main__":
    try:
        {"kafka": kafka, "cql": cql}[sys.argv[1]](sys.argv[2])
    except Exception as e:  # a probe reports, it never hangs
        print(f"not ready: {e}", file=sys.stderr)
        sys.exit(1)
