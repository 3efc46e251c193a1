#!/usr/bin/python3
"""A raw-socket SMTP server on 127.0.0.1 that speaks CHUNKING (RFC 3030), for the proxy
tests: aiosmtpd and Postfix's smtp-sink do not implement BDAT.

Usage: chunking_sink.py RECORD_FILE SECONDS [--close-in-data] [--data-reply "CODE TEXT"]

Prints "PORT <n>" when ready. EHLO offers PIPELINING, CHUNKING, DSN, SMTPUTF8, 8BITMIME and
SIZE. Commands: EHLO, HELO, MAIL, RCPT, DATA, BDAT n [LAST], RSET, NOOP, QUIT (anything else
gets 500). Each delivered message is appended to RECORD_FILE as one JSON line:
  mail_from  the MAIL line without "MAIL FROM:" and CRLF (path and parameters, raw)
  rcpts      the RCPT lines without CRLF, raw (parameters included)
  via        "DATA" or "BDAT"
  chunks     BDAT: the size of each chunk, in order
  data       the message bytes, hex (DATA: dot-unstuffed, terminator removed)
  wire       DATA: the bytes as received, terminator included, hex
Options:
  --close-in-data   after 354, read a few bytes of the message and close the connection
  --data-reply R    answer the end of a message (DATA or BDAT LAST) with R instead of 250;
                    only a 2xx reply records the message
Exits after SECONDS or when stdin closes, whichever comes first.
"""
import json
import os
import socket
import sys
import threading

EHLO = (
    b"250-chunking-sink.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-DSN\r\n"
    b"250-SMTPUTF8\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
)


class Server:
    def __init__(self, path, close_in_data, data_reply):
        self.path = path
        self.close_in_data = close_in_data
        self.data_reply = data_reply
        self.lock = threading.Lock()
        self.count = 0

    def record(self, rec):
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def final(self, tx, via, data, wire=None):
        """The reply to a complete message; records it if the reply is positive."""
        if self.data_reply is not None:
            reply = self.data_reply
        else:
            with self.lock:
                self.count += 1
                n = self.count
            reply = "250 2.0.0 Ok: queued as CHUNK%d" % n
        if reply.startswith("2"):
            rec = {
                "mail_from": tx["mail_from"],
                "rcpts": tx["rcpts"],
                "via": via,
                "chunks": tx["chunks"],
                "data": data.hex(),
            }
            if wire is not None:
                rec["wire"] = wire.hex()
            self.record(rec)
        return reply.encode() + b"\r\n"

    def serve(self, sock):
        sock.settimeout(30)
        f = sock.makefile("rb")

        def send(b):
            sock.sendall(b)

        def fresh():
            return {"mail_from": None, "rcpts": [], "chunks": [], "data": b"", "failed": False}

        tx = fresh()
        try:
            send(b"220 chunking-sink.example ESMTP\r\n")
            while True:
                line = f.readline(4096)
                if not line:
                    return
                cmd = line.rstrip(b"\r\n")
                word = cmd.split(b" ", 1)[0].upper()
                upper = cmd.upper()
                if word == b"EHLO":
                    tx = fresh()
                    send(EHLO)
                elif word == b"HELO":
                    tx = fresh()
                    send(b"250 chunking-sink.example\r\n")
                elif upper.startswith(b"MAIL FROM:"):
                    if tx["mail_from"] is not None:
                        send(b"503 5.5.1 Error: nested MAIL command\r\n")
                    else:
                        tx["mail_from"] = cmd[10:].decode("utf-8", "surrogateescape")
                        send(b"250 2.1.0 Ok\r\n")
                elif upper.startswith(b"RCPT TO:"):
                    if tx["mail_from"] is None:
                        send(b"503 5.5.1 Error: need MAIL command\r\n")
                    else:
                        tx["rcpts"].append(cmd.decode("utf-8", "surrogateescape"))
                        send(b"250 2.1.5 Ok\r\n")
                elif word == b"DATA":
                    if not tx["rcpts"] or tx["chunks"]:
                        send(b"503 5.5.1 Error: need RCPT command\r\n")
                        continue
                    send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    if self.close_in_data:
                        f.read(8)
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    wire = b""
                    data = b""
                    while True:
                        l = f.readline(1 << 20)
                        if not l:
                            return
                        wire += l
                        if l == b".\r\n":
                            break
                        data += l[1:] if l.startswith(b".") else l
                    send(self.final(tx, "DATA", data, wire))
                    tx = fresh()
                elif word == b"BDAT":
                    parts = cmd.split()
                    try:
                        size = int(parts[1])
                        last = len(parts) == 3 and parts[2].upper() == b"LAST"
                        if len(parts) > 3 or (len(parts) == 3 and not last):
                            raise ValueError
                    except (IndexError, ValueError):
                        send(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
                        continue
                    chunk = f.read(size) if size else b""
                    if len(chunk) != size:
                        return
                    # RFC 3030: the chunk is consumed whatever the answer.
                    if not tx["rcpts"] or tx["failed"]:
                        tx["failed"] = True
                        send(b"503 5.5.1 Error: need RCPT command\r\n")
                        continue
                    tx["chunks"].append(size)
                    tx["data"] += chunk
                    if last:
                        send(self.final(tx, "BDAT", tx["data"]))
                        tx = fresh()
                    else:
                        send(b"250 2.0.0 %d octets received\r\n" % size)
                elif word == b"RSET":
                    tx = fresh()
                    send(b"250 2.0.0 Ok\r\n")
                elif word == b"NOOP":
                    send(b"250 2.0.0 Ok\r\n")
                elif word == b"QUIT":
                    send(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    send(b"500 5.5.2 Error: command not recognized\r\n")
        except OSError:
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass


def main():
    args = sys.argv[1:]
    path, limit, args = args[0], float(args[1]), args[2:]
    close_in_data = False
    data_reply = None
    while args:
        if args[0] == "--close-in-data":
            close_in_data, args = True, args[1:]
        elif args[0] == "--data-reply":
            data_reply, args = args[1], args[2:]
        else:
            sys.exit("unknown option " + args[0])
    server = Server(path, close_in_data, data_reply)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    print("PORT %d" % ls.getsockname()[1], flush=True)

    def accept():
        while True:
            s, _ = ls.accept()
            threading.Thread(target=server.serve, args=(s,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(limit)
    os._exit(0)


if __name__ == "__main__":
    main()
