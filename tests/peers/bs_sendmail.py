#!/usr/bin/python3
"""A fake `sendmail -bs`: speaks SMTP on stdin/stdout and records what it is given.

Records to $BS_RECORD (JSON lines): argv, then one object per accepted message with
mail_from (the raw MAIL line), rcpt lines and the data (latin-1). Supports PIPELINING,
8BITMIME, SIZE, DSN and CHUNKING (BDAT) and STARTTLS (advertised, to check it is hidden).
"""
import json
import os
import sys

rec_path = os.environ["BS_RECORD"]


def record(obj):
    with open(rec_path, "a") as f:
        f.write(json.dumps(obj) + "\n")


out = sys.stdout.buffer
inp = sys.stdin.buffer


def reply(s):
    out.write(s.encode() + b"\r\n")
    out.flush()


record({"argv": sys.argv[1:]})
reply("220 fake.example ESMTP fake-sendmail")
mail, rcpts = None, []
while True:
    line = inp.readline()
    if not line:
        break
    cmd = line.rstrip(b"\r\n")
    verb = cmd.split(b" ", 1)[0].upper()
    if verb == b"EHLO":
        reply("250-fake.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-8BITMIME\r\n250-DSN\r\n250 CHUNKING")
    elif verb == b"HELO":
        reply("250 fake.example")
    elif cmd.upper().startswith(b"MAIL FROM:"):
        mail, rcpts = cmd.decode("latin-1"), []
        reply("250 2.1.0 Ok")
    elif cmd.upper().startswith(b"RCPT TO:"):
        if b"reject" in cmd:
            reply("550 5.1.1 Recipient rejected")
        else:
            rcpts.append(cmd.decode("latin-1"))
            reply("250 2.1.5 Ok")
    elif verb == b"DATA":
        reply("354 End data with <CR><LF>.<CR><LF>")
        data = b""
        while True:
            l = inp.readline()
            if not l:
                sys.exit(1)
            if l == b".\r\n":
                break
            data += l
        record({"mail_from": mail, "rcpt": rcpts, "data": data.decode("latin-1")})
        reply("250 2.0.0 Ok: queued as FAKE1")
    elif verb == b"BDAT":
        parts = cmd.split()
        data = inp.read(int(parts[1]))
        if len(parts) > 2:
            record({"mail_from": mail, "rcpt": rcpts, "data": data.decode("latin-1")})
            reply("250 2.0.0 Ok: queued as FAKE2")
        else:
            reply("250 2.0.0 chunk ok")
    elif verb == b"RSET":
        mail, rcpts = None, []
        reply("250 2.0.0 Ok")
    elif verb == b"QUIT":
        reply("221 2.0.0 Bye")
        break
    else:
        reply("502 5.5.2 Error: command not recognized")
