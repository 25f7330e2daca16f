"""aiosmtpd benchmark peer: one asyncio loop, no Controller thread.

    python aiosmtpd_peer.py --port PORT --mode discard
    python aiosmtpd_peer.py --port PORT --mode maildir --maildir DIR
        [--lmtp] [--tls-cert CERT --tls-key KEY]

discard: handle_DATA answers 250 and drops the message.
maildir: handle_DATA writes the message to DIR/tmp/, fsyncs it, renames it into DIR/new/, fsyncs
         DIR/new/, then answers 250. The file work runs in the loop's default thread pool.

`hostname=` is passed explicitly: without it aiosmtpd calls socket.getfqdn() (a DNS query) on every
connection. `data_size_limit=None` lifts aiosmtpd's 32 MiB default so the 50 MB cell is accepted.
--lmtp speaks LMTP (aiosmtpd.lmtp.LMTP: LHLO; one reply after DATA, which is right for the
benchmark's one-recipient LMTP cell). --tls-cert/--tls-key offer STARTTLS with that certificate.

On SIGUSR1 the peer writes "<seq> <messages accepted>" to --count-file (tmp + rename), so the
harness can check the number of accepted messages against what smtp-source sent.
"""

import argparse
import asyncio
import itertools
import os
import signal
import ssl
import time

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP


class DiscardHandler:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 OK"


class MaildirHandler:
    def __init__(self, root):
        self.count = 0
        self.tmp = os.path.join(root, "tmp")
        self.new = os.path.join(root, "new")
        os.makedirs(self.tmp, exist_ok=True)
        os.makedirs(self.new, exist_ok=True)
        self.seq = itertools.count()
        self.pid = os.getpid()

    def _deliver(self, data):
        name = f"{time.time_ns()}.P{self.pid}Q{next(self.seq)}.bench.test"
        tmp_path = os.path.join(self.tmp, name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, os.path.join(self.new, name))
        dfd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        await asyncio.get_running_loop().run_in_executor(None, self._deliver, data)
        self.count += 1
        return "250 OK"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=("discard", "maildir"), required=True)
    ap.add_argument("--maildir")
    ap.add_argument("--count-file")
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()

    if args.mode == "maildir":
        if not args.maildir:
            ap.error("--maildir is required with --mode maildir")
        handler = MaildirHandler(args.maildir)
    else:
        handler = DiscardHandler()

    kw = {}
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        kw["tls_context"] = ctx
    cls = LMTP if args.lmtp else SMTP

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: cls(handler, hostname="bench.test", data_size_limit=None, **kw),
        host=args.host,
        port=args.port,
        backlog=1024,
    )

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if args.count_file:
        seq = itertools.count(1)

        def dump_count():
            tmp = args.count_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{next(seq)} {handler.count}\n")
            os.replace(tmp, args.count_file)

        loop.add_signal_handler(signal.SIGUSR1, dump_count)

    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
