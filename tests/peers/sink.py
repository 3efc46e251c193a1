#!/usr/bin/python3
"""An SMTP sink on 127.0.0.1 (aiosmtpd) that records every message.

Usage: sink.py RECORD_FILE [SECONDS]
Prints "PORT <n>" when ready. Each accepted message is appended to RECORD_FILE as one JSON
line: mail_from, rcpt_tos, mail_options, rcpt_options, size, sha256, data (latin-1 text).
Exits after SECONDS (default 120) or when stdin closes, whichever comes first.
With SINK_AUTH=user:password in the environment it offers AUTH PLAIN and LOGIN (in the
clear: it stands for an MTA behind a proxy) and takes that one user.
"""
import os
import warnings
import hashlib
import json
import socket
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or b""
        rec = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "rcpt_options": envelope.rcpt_options,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "data": data.decode("latin-1") if len(data) < 1 << 16 else "",
        }
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return "250 2.0.0 Ok: queued as SINK%d" % (int(time.time() * 1000) % 100000)


# aiosmtpd itself touches its deprecated Session.login_data on every AUTH.
warnings.simplefilter("ignore", DeprecationWarning)


def authenticator(expected):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == expected
        return AuthResult(success=ok, handled=False)

    return check


class Controller8(Controller):
    def factory(self):
        auth = os.environ.get("SINK_AUTH")
        extra = {}
        if auth:
            user, password = auth.split(":", 1)
            extra = dict(authenticator=authenticator((user.encode(), password.encode())), auth_require_tls=False)
        return SMTP(self.handler, enable_SMTPUTF8=True, decode_data=False, data_size_limit=64 << 20, **extra)


def main():
    path = sys.argv[1]
    limit = float(sys.argv[2]) if len(sys.argv) > 2 else 120
    # aiosmtpd's Controller connects to its own port to check it is up: pick one first.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    c = Controller8(Recorder(path), hostname="127.0.0.1", port=port)
    c.start()
    print("PORT %d" % port, flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(limit)
    c.stop()


if __name__ == "__main__":
    main()
