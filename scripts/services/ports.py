#!/usr/bin/env python3
"""Who listens on a TCP port, from /proc alone (no ss, lsof or netstat to install or to parse).

  ports.py PORT...  -> one line per listening socket on PORT that a bind to 127.0.0.1:PORT collides
                       with (127.0.0.1, the wildcard address, or their IPv6 forms):
                         PORT PID pid PID (cwd DIR): COMMAND LINE
                       PID is "?" when no visible process holds the socket (another user's process,
                       seen without root). Nothing printed: every PORT is free. Always exits 0.
"""
import os
import sys

LISTEN = "0A"
# Local addresses as /proc/net/tcp{,6} print them: hex, each 32-bit word in host byte order (both byte
# orders listed). 127.0.0.1, 0.0.0.0, ::, and ::ffff:127.0.0.1 (how Java's dual-stack sockets show a bind
# to 127.0.0.1).
CLASH = {
    "0100007F", "7F000001", "00000000",
    "00000000000000000000000000000000",
    "0000000000000000FFFF00000100007F", "00000000000000000000FFFF7F000001",
}


def listeners(ports):
    """(port, socket inode) of every listening TCP socket on one of `ports` at a clashing address."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != LISTEN:
                continue
            addr, _, port_hex = cols[1].partition(":")
            port = int(port_hex, 16)
            if port in ports and addr.upper() in CLASH:
                found.append((port, cols[9]))
    return found


def owners(inodes):
    """inode -> pids whose open files include that socket (the processes we may look into)."""
    want = {f"socket:[{i}]": i for i in inodes}
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in want:
                out.setdefault(want[target], set()).add(int(pid))
    return out


def describe(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = "?"
    if len(cmd) > 300:
        cmd = cmd[:300] + " ..."
    return f"pid {pid} (cwd {cwd}): {cmd}"


def main(args):
    ports = {int(a) for a in args}
    found = listeners(ports)
    by_inode = owners({inode for _, inode in found})
    seen = set()
    for port, inode in found:
        pids = sorted(by_inode.get(inode, ())) or ["?"]
        for pid in pids:
            if (port, pid) in seen:
                continue
            seen.add((port, pid))
            text = describe(pid) if pid != "?" else "a process this user cannot see (try as root: ss -ltnp)"
            print(f"{port} {pid} {text}")


if __name__ == "__main__":
    main(sys.argv[1:])
