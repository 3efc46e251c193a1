#!/usr/bin/python3
"""Hold N idle SMTP client connections open, for bench/proxy.sh's memory figure.

    idle_conns.py HOST PORT N

Opens N connections to HOST:PORT and reads the complete 220 greeting on each: the proxy
only relays the greeting after it has connected to its downstream, so once every greeting
is in, each session is fully set up (client side, downstream side, buffers). Then prints
"READY" and holds the connections, sending nothing, until stdin reaches EOF or a SIGTERM /
SIGINT arrives; then closes them and exits 0. Any error (refusal, a non-220 greeting, a
timeout) goes to stderr with exit status 1, so the caller never measures a half-set-up run.
"""
import resource
import signal
import socket
import sys

TIMEOUT = 10.0  # seconds per greeting; loopback answers in well under a millisecond


def greeting(sock):
    """Read one SMTP reply (possibly multi-line: 220-... 220 ...) and return it."""
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the greeting was complete")
        buf += chunk
        lines = buf.split(b"\r\n")
        # The reply is complete when a full line has a space after the code.
        for line in lines[:-1]:
            if len(line) >= 4 and line[3:4] == b" ":
                return buf


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: idle_conns.py HOST PORT N")
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    # One descriptor per connection plus a few: raise the soft limit up to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

    # SIGTERM should close the sockets cleanly, same as EOF on stdin.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    conns = []
    try:
        # One at a time: connect, then wait for the greeting. Sequential setup keeps the
        # proxy's accept queue short, so no connection is refused for a full backlog.
        for i in range(n):
            s = socket.create_connection((host, port), timeout=TIMEOUT)
            conns.append(s)
            reply = greeting(s)
            if not reply.startswith(b"220"):
                first = reply.split(b"\r\n")[0].decode("ascii", "replace")
                raise ConnectionError(f"connection {i + 1}: greeting {first!r}")
    except (OSError, ConnectionError) as e:
        print(f"idle_conns: {len(conns)}/{n} set up: {e}", file=sys.stderr)
        sys.exit(1)

    print("READY", flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the caller closed our stdin
    except KeyboardInterrupt:
        pass
    finally:
        for s in conns:
            s.close()


if __name__ == "__main__":
    main()
