#!/usr/bin/python3
"""A scripted SMTP client for the front-mode tests: it can connect from a chosen loopback
address (127.0.0.2 is not in mynetworks) and do STARTTLS with Python's ssl module.

usage: client.py HOST PORT [--source ADDR] COMMAND...

Prints the greeting and each reply, one line per reply line. Special commands:
  STARTTLS          send it; on 220 start TLS (no verification: a throwaway certificate)
                    and print "TLS <sha256 of the server certificate, DER>"
  STARTTLS+NOOP     the same, with NOOP pipelined in the same write (it must be ignored)
  DATA              on 354 send a short bounce and print the final reply
"""
import hashlib
import socket
import ssl
import sys

BODY = b"Subject: Undelivered Mail Returned to Sender\r\n\r\nYour message could not be delivered.\r\n.\r\n"


def reply(f):
    lines = []
    while True:
        try:
            line = f.readline()
        except ConnectionResetError:
            line = b""
        if not line:
            lines.append("EOF")
            return lines
        lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return lines


def main():
    args = sys.argv[1:]
    host, port, args = args[0], int(args[1]), args[2:]
    source = None
    if args[:1] == ["--source"]:
        source, args = args[1], args[2:]
    sock = socket.create_connection((host, port), timeout=30, source_address=(source, 0) if source else None)
    f = sock.makefile("rb")
    out = reply(f)
    for cmd in args:
        if out and out[-1] == "EOF":
            break
        starttls = cmd.startswith("STARTTLS")
        wire = b"STARTTLS\r\nNOOP\r\n" if cmd == "STARTTLS+NOOP" else cmd.encode() + b"\r\n"
        try:
            sock.sendall(wire)
            r = reply(f)
        except ConnectionResetError:
            # A server that has closed may reset rather than end the stream: the same end.
            r = ["EOF"]
        out += r
        code = r[-1][:3]
        if starttls and code == "220":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host)
            f = sock.makefile("rb")
            out.append("TLS " + hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest())
        elif cmd == "DATA" and code == "354":
            sock.sendall(BODY)
            out += reply(f)
    print("\n".join(out))


if __name__ == "__main__":
    main()
