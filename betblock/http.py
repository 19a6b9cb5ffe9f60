"""The HTTP composition: one aiohttp application, error handling, health, and each owner's routes.

Owns the middleware every route shares (JSON errors with the status the owner chose, 413 from the
body-size cap, a 500 with one log line for our own bugs) and /healthz, /readyz. Owners (feeds for
agencies, hits for admins) hand over their route tables or sub-applications; nothing here knows
their business.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web

from config.settings import HttpSettings

log = structlog.get_logger("betblock.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HttpMount = Callable[[web.Application], None]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        # Owners raise with a plain reason; clients get JSON they can parse.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"error": exc.reason, "detail": exc.text}, status=exc.status, headers=headers)
    except Exception:
        log.exception("internal error", method=request.method, path=request.path)
        return web.json_response({"error": "internal error"}, status=500)


# Served while the node starts (the listener opens before the first snapshot is compiled, so
# that an orchestrator sees a live process that is not ready yet, and metrics show progress).
ALWAYS = frozenset({"/healthz", "/readyz", "/metrics"})


def build_app(
    settings: HttpSettings,
    *,
    ready: Callable[[], bool],
    mounts: Iterable[HttpMount] = (),
) -> web.Application:
    """The application; each ``mount`` adds an owner's routes to it. Until ``ready``, every
    route but health, readiness and metrics answers 503."""

    @web.middleware
    async def starting(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in ALWAYS and not ready():
            return web.json_response({"status": "starting"}, status=503, headers={"Retry-After": "5"})
        return await handler(request)

    app = web.Application(middlewares=[starting, errors], client_max_size=settings.max_body_bytes)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for mount in mounts:
        mount(app)
    return app


class HttpServer:
    """Runs an application on one address."""

    def __init__(self, address: tuple[str, int], app: web.Application) -> None:
        self.address = address
        self.app = app
        self.runner = web.AppRunner(app, access_log=None)
        self.bound: tuple[str, int] | None = None

    async def start(self) -> None:
        await self.runner.setup()
        host, port = self.address
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]  # the real port when 0 was asked
        self.bound = sock.getsockname()[:2]
        log.info("http listening", address=self.bound[0], port=self.bound[1])

    async def close(self) -> None:
        await self.runner.cleanup()
