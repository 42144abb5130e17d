#!/usr/bin/env python3
"""aiosmtpd_server.py MODE CERT KEY -- an aiosmtpd server for tls.test.

MODE is "starttls" (STARTTLS required before mail) or "implicit" (TLS from
the first byte). Listens on 127.0.0.1, on a port the system chooses, and
prints "port N". When its standard input closes it prints, as a JSON
array, for the last message: "tls" or "clear", the sender, the first
recipient and the message text, then exits.
"""

import asyncio
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP


class Recorder:
    def __init__(self):
        self.last = None

    async def handle_DATA(self, server, session, envelope):
        secure = (server.transport.get_extra_info("ssl_object") is not None
                  or getattr(server, "_tls_protocol", None) is not None)
        self.last = ["tls" if secure else "clear", envelope.mail_from,
                     envelope.rcpt_tos[0] if envelope.rcpt_tos else "",
                     envelope.content.decode("latin-1")
                     if isinstance(envelope.content, bytes)
                     else envelope.content]
        return "250 OK"


async def main():
    mode, cert, key = sys.argv[1:4]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    handler = Recorder()
    loop = asyncio.get_running_loop()
    if mode == "starttls":
        factory = lambda: SMTP(handler, tls_context=ctx,
                               require_starttls=True)
        server = await loop.create_server(factory, "127.0.0.1", 0)
    else:
        factory = lambda: SMTP(handler)
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx)
    print("port %d" % server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    print(json.dumps(handler.last), flush=True)


asyncio.run(main())
