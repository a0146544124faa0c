#!/usr/bin/env python3
"""Readiness probes that speak each service's own protocol, with nothing to install.

  probe.py kafka HOST:PORT   -> a Kafka Metadata request (v0); exit 0 when a broker answers with itself
  probe.py cql HOST:PORT     -> CQL v4 STARTUP + `SELECT release_version FROM system.local`; prints it
  probe.py tls HOST:PORT CAFILE  -> a TLS handshake that verifies the server against CAFILE (SASL_SSL listener)
  probe.py cql-tls HOST:PORT SECRETS -> over TLS with SECRETS' client certificate: CQL v4 STARTUP, answered
                                with AUTHENTICATE, then a login as the default superuser
"""
import socket
import ssl
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


def startup_body():
    opts = b"CQL_VERSION"
    val = b"3.0.0"
    return struct.pack(">H", 1) + struct.pack(">H", len(opts)) + opts + struct.pack(">H", len(val)) + val


def tls(addr, cafile):
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, int(port)), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            print(f"tls: {addr} {s.version()}")


def cql_tls(addr, secrets):
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=f"{secrets}/ca.crt")
    ctx.load_cert_chain(f"{secrets}/client.crt", f"{secrets}/client.key")
    with socket.create_connection((host, int(port)), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(cql_frame(0, 0x01, startup_body()))
            op, body = cql_read(s)
            if op != 0x03:  # AUTHENTICATE: TLS works and the node asks for credentials
                raise RuntimeError(f"STARTUP answered opcode {op}, not AUTHENTICATE")
            n = struct.unpack(">H", body[:2])[0]
            authenticator = body[2:2 + n].decode()
            # Ready means the default superuser exists (it is made just after start-up); the tests log in
            # with it to create their own role.
            token = b"\x00cassandra\x00cassandra"
            s.sendall(cql_frame(1, 0x0F, struct.pack(">i", len(token)) + token))
            op, body = cql_read(s)
            if op != 0x10:  # AUTH_SUCCESS
                raise RuntimeError(f"the default superuser cannot log in yet (opcode {op})")
            print("cassandra-tls: TLS up, authenticator", authenticator, "and its superuser answer")


def cql(addr):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as s:
        s.sendall(cql_frame(0, 0x01, startup_body()))
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
        {"kafka": kafka, "cql": cql, "tls": tls, "cql-tls": cql_tls}[sys.argv[1]](*sys.argv[2:])
    except Exception as e:  # a probe reports, it never hangs
        print(f"not ready: {e}", file=sys.stderr)
        sys.exit(1)
