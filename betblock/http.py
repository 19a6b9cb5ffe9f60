"""The HTTP composition: one aiohttp application, error handling, health, and each owner's routes.

Owns the middleware every route shares (JSON errors with the status the owner chose, 413 from the
body-size caps before a body is read, a 500 with one log line for our own bugs), /healthz,
/readyz, and the listeners' descriptor budget and deadlines (``HttpServer``). Owners (feeds for
agencies, hits for admins) hand over their route tables or sub-applications; nothing here knows
their business.
"""

from __future__ import annotations

import asyncio
import math
import re
import resource
from collections.abc import Awaitable, Callable, Iterable, Iterator

import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from betblock.auth import LOGIN_PATHS
from betblock.authlimit import FailureLimiter
from config.auth import PUBLIC, accepts
from config.settings import HttpSettings

log = structlog.get_logger("betblock.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HttpMount = Callable[[web.Application], None]


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectionError:
        raise  # the client went away (or missed a deadline): aiohttp closes quietly
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        # Owners raise with a plain reason; clients get JSON they can parse.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"error": exc.reason, "detail": exc.text}, status=exc.status, headers=headers)
    except Exception:
        log.exception("internal error", method=request.method, path=request.path)
        return web.json_response({"error": "internal error"}, status=500)


MAX_PARAM = 4096
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _param_problem(text: str) -> str:
    if len(text) > MAX_PARAM:
        return f"longer than {MAX_PARAM} characters"
    if _CONTROL.search(text):
        return "control characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return ""


def _presented_credential(request: web.Request) -> bool:
    """A 401 counts as a guess when the request offered something to check; a client that sent
    nothing (a browser opening an admin route) is not guessing."""
    return "Authorization" in request.headers or "Cookie" in request.headers or request.path in LOGIN_PATHS


# Served while the node starts (the listener opens before the first snapshot is compiled, so
# that an orchestrator sees a live process that is not ready yet, and metrics show progress).
ALWAYS = frozenset({"/healthz", "/readyz", "/metrics"})


def build_app(
    settings: HttpSettings,
    *,
    ready: Callable[[], bool],
    mounts: Iterable[HttpMount] = (),
    degraded: Callable[[], dict[str, object]] | None = None,
    limiter: FailureLimiter | None = None,
) -> web.Application:
    """The application; each ``mount`` adds an owner's routes to it. Until ``ready``, every
    route but health, readiness and metrics answers 503. A client that fails to authenticate
    too often gets 429 (``limiter``) on every route but those."""
    limiter = limiter if limiter is not None else FailureLimiter(settings.auth_max_failures, settings.auth_lockout_max)

    @web.middleware
    async def brute_force(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ALWAYS:
            return await handler(request)
        key = limiter.key(request.remote)
        wait = limiter.retry_after(key)
        if wait:
            limiter.refuse()
            return web.json_response(
                {"error": "too many failed authentications from this address", "retry_after": math.ceil(wait)},
                status=429,
                headers={"Retry-After": str(math.ceil(wait))},
            )
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status == 401 and _presented_credential(request):
                limiter.failed(key, f"{request.method} {request.path}")
            raise
        if resp.status == 401 and _presented_credential(request):
            limiter.failed(key, f"{request.method} {request.path}")
        return resp

    @web.middleware
    async def starting(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in ALWAYS and not ready():
            return web.json_response({"status": "starting"}, status=503, headers={"Retry-After": "5"})
        return await handler(request)

    @web.middleware
    async def plain_params(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Every owner gets text it can store and compare: no control characters (a NUL is
        # refused by PostgreSQL mid-query), no lone surrogates, nothing absurdly long.
        for where, items in (("query", request.query.items()), ("path", request.match_info.items())):
            for key, value in items:
                problem = _param_problem(key) or _param_problem(value)
                if problem:
                    raise web.HTTPBadRequest(reason=f"{where} parameter {key[:40]!r}: {problem}")
        return await handler(request)

    form_cap = min(settings.max_form_bytes, settings.max_body_bytes)

    @web.middleware
    async def body_caps(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Refused before a byte of the body is read: a request without credentials (the login
        # form) may send a few KiB; a push streams up to max_body_bytes once its token is
        # checked. A body without a length is cut off at the same caps while it is read.
        size = request.content_length
        if size is not None:
            cap = settings.max_body_bytes if "Authorization" in request.headers else form_cap
            if size > cap:
                raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=size)
        return await handler(request)

    # client_max_size caps every body read whole (read(), post(), json()); pushes stream theirs.
    app = web.Application(middlewares=[brute_force, starting, errors, body_caps, plain_params], client_max_size=form_cap)

    @accepts(PUBLIC)
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @accepts(PUBLIC)
    async def readyz(_request: web.Request) -> web.Response:
        if ready():
            # Parts that failed without stopping DNS (a damaged hit store): still ready, and said.
            detail = degraded() if degraded is not None else {}
            return web.json_response({"status": "ready", **({"degraded": detail} if detail else {})})
        return web.json_response({"status": "starting"}, status=503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for mount in mounts:
        mount(app)
    return app


class HttpServer:
    """Runs an application on one address, within a budget of file descriptors.

    Every socket an HTTP client holds is a descriptor the resolver cannot use for an upstream
    query or a TCP client, so each listener holds at most ``limit`` connections: when it is
    full, the oldest connection without a request in progress (idle, or still sending its
    headers) is closed for the new one, and the new one is closed when every connection is busy.
    A connection must complete its request headers within ``idle_timeout`` of connecting or of
    its last answer, and a request body must arrive in full within ``body_timeout`` (within
    ``idle_timeout`` when the request carries no credentials)."""

    def __init__(
        self, address: tuple[str, int], app: web.Application, settings: HttpSettings, *, limit: int, name: str = "api"
    ) -> None:
        self.name = name
        self.address = address
        self.app = app
        self.limit = limit
        self.idle_timeout = settings.idle_timeout
        self.body_timeout = settings.body_timeout
        self.busy: set[object] = set()  # protocols with a request in the handler
        self.evicted = 0  # idle connections closed for a new one
        self.refused = 0  # new connections closed because every slot was busy
        self.timed_out = 0  # connections closed for a body that did not arrive in time
        app.middlewares.insert(0, self._track)  # outermost: sees every request, even a 503
        # keepalive_timeout runs from the connection's start (aiohttp >= 3.10) and again after
        # every answer, and closes a connection still waiting for a complete request: the
        # header deadline and the keep-alive idle time in one.
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.idle_timeout)
        self.bound: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        await self.runner.setup()
        host, port = self.address
        loop = asyncio.get_running_loop()
        # The backlog bounds how far one burst of accepts can overshoot the limit (the
        # connections of a burst are counted once they are set up).
        self._server = await loop.create_server(
            self._protocol, host, port, reuse_address=True, backlog=min(128, self.limit)
        )
        self.bound = self._server.sockets[0].getsockname()[:2]
        log.info("http listening", listener=self.name, address=self.bound[0], port=self.bound[1], max_connections=self.limit)

    def connections(self) -> int:
        server = self.runner.server
        return 0 if server is None else sum(1 for h in server.connections if h.transport is not None)

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self.runner.server
        assert server is not None
        live = [h for h in server.connections if h.transport is not None]  # oldest first
        if len(live) >= self.limit:
            victim = next((h for h in live if h not in self.busy), None)
            if victim is None:
                self.refused += 1
                return _Refuse()
            victim.force_close()
            self.evicted += 1
        return server()

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        proto = request.protocol
        self.busy.add(proto)
        timer = None
        if request.body_exists and not request.content.is_eof():
            seconds = self.body_timeout if "Authorization" in request.headers else self.idle_timeout
            timer = asyncio.get_running_loop().call_later(seconds, self._body_deadline, request)
        try:
            return await handler(request)
        finally:
            self.busy.discard(proto)
            if timer is not None:
                timer.cancel()

    def _body_deadline(self, request: web.Request) -> None:
        if request.content.is_eof():
            return
        self.timed_out += 1
        # The handler's read fails with ConnectionResetError, which aiohttp takes as a client gone.
        if request.protocol is not None:
            request.protocol.force_close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.runner.cleanup()


class _Refuse(asyncio.Protocol):
    """A connection over the budget: closed as soon as it is set up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def raise_nofile_limit() -> int:
    """Raise the soft limit of open files to the hard limit (the common soft limit of 1,024 is
    small for a resolver); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    was = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("file descriptor limit not raised", soft=soft, hard=hard, error=str(exc))
    # One line at start: the budget every TCP client, upstream attempt and HTTP connection shares.
    log.info("file descriptor limit", soft=soft, hard=hard, was=was)
    return soft


def connection_limit(configured: int, nofile: int) -> int:
    """Connections one HTTP listener may hold: ``configured``, or a sixteenth of the descriptor
    limit (64 at 1,024, at most 1,024), so that two HTTP listeners at their worst leave most
    descriptors to DNS: upstream sockets, TCP clients, stores and list files."""
    if configured:
        return configured
    return max(16, min(1024, nofile // 16))


def http_metrics(
    servers: Callable[[], dict[str, HttpServer | None]], limiter: FailureLimiter | None = None
) -> Callable[[], Iterator[Metric]]:
    """Metric families of the HTTP listeners (``servers``: listener name -> server, read at
    scrape time) and of the API's brute-force control."""

    def collect() -> Iterator[Metric]:
        if limiter is not None:
            yield CounterMetricFamily("betblock_http_auth_failures", "Failed authentications (a 401 to a request with a credential)", value=limiter.failures)
            yield CounterMetricFamily("betblock_http_auth_lockouts", "Times a client was locked out after too many failures", value=limiter.lockouts)
            yield CounterMetricFamily("betblock_http_auth_refused", "Requests answered 429 during a lockout", value=limiter.refused)
            yield GaugeMetricFamily("betblock_http_auth_locked_clients", "Clients locked out now", value=limiter.locked())
        live = {name: s for name, s in servers().items() if s is not None}
        families = (
            (GaugeMetricFamily, "betblock_http_connections", "Open HTTP connections per listener", HttpServer.connections),
            (CounterMetricFamily, "betblock_http_evicted", "Idle HTTP connections closed to make room for a new one", lambda s: s.evicted),
            (CounterMetricFamily, "betblock_http_refused", "HTTP connections closed at once: every slot had a request in progress", lambda s: s.refused),
            (CounterMetricFamily, "betblock_http_body_timeouts", "HTTP connections closed because a request body did not arrive in time", lambda s: s.timed_out),
        )
        for kind, name, doc, value in families:
            family = kind(name, doc, labels=["listener"])
            for listener, server in live.items():
                family.add_metric([listener], value(server))
            yield family

    return collect
