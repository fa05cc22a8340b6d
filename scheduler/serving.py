"""uvicorn's `Server`, ending the job event streams first when it shuts down.

uvicorn stops accepting connections, then waits for the open responses to finish (up to its graceful-shutdown
timeout, after which it cancels them and logs an error), and only then runs the app's lifespan end. The event
streams of `scheduler.api.jobs` never finish by themselves, so an open browser tab would hold every shutdown
for the whole timeout. This server ends them (`scheduler.changes.drain_feeds`) before the wait. `modelops
serve` (one process) and the embedded server of `modelops run` use it; with `--workers N` uvicorn builds its
own servers in the worker processes, whose streams end at the graceful-shutdown timeout.
"""

from __future__ import annotations

import socket

import uvicorn

from scheduler.changes import drain_feeds

__all__ = ["Server"]


class Server(uvicorn.Server):
    """`uvicorn.Server` whose shutdown first ends the job change feeds' subscriptions (and so the streams)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain_feeds()
        await super().shutdown(sockets=sockets)
