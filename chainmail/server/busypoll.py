"""Busy polling: waiting for a socket by polling it for a few microseconds before sleeping.

When a process sleeps in epoll_wait and its CPU goes idle, the wake-up on the next packet
costs tens of microseconds, and far more in a virtual machine whose idle CPU halts.  A client
on a local network answers a reply, or reconnects after QUIT, within about that time.  So a
*lone* session (the only one open in the process: nobody else needs the loop) polls its
socket for up to ``busyPoll`` microseconds before it parks in trio's epoll, and when the last
session ends the listening socket is polled the same way for the next connection.  With more
sessions open the loop always has other work, and nothing spins.  The cost is bounded: at
most ``busyPoll`` microseconds of CPU per wait, and only while the server is otherwise idle.
It is the idea of Linux's ``SO_BUSY_POLL``, done in user space because loopback and most
virtual NICs do not support it.
"""

from __future__ import annotations

import select
import socket
import time

__all__ = ["poll_readable"]


def poll_readable(sock: socket.socket, seconds: float) -> bool:
    """True as soon as ``sock`` is readable (data, a pending connection, EOF or an error);
    False once ``seconds`` have passed without.  Never yields to the event loop."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poll = poller.poll
    clock = time.perf_counter
    end = clock() + seconds
    while True:
        if poll(0):
            return True
        if clock() >= end:
            return False
