"""The HTTP composition: health, readiness, JSON errors, the body-size cap."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from config.auth import PUBLIC, accepts
from tests.conftest import NodeFactory


async def test_health_and_ready(node: NodeFactory) -> None:
    app = await node()
    assert app.http is not None and app.http.bound is not None
    host, port = app.http.bound
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{host}:{port}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"http://{host}:{port}/readyz") as r:
            assert r.status == 200
        async with s.get(f"http://{host}:{port}/nope") as r:
            assert r.status == 404
            assert (await r.json())["error"] == "Not Found"


async def test_oversize_body_is_413_and_owner_errors_are_json(node: NodeFactory) -> None:
    @accepts(PUBLIC)  # an undeclared route would take the admin only
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        if not body:
            raise web.HTTPUnprocessableEntity(reason="empty body")
        return web.json_response({"size": len(body)})

    def mount(http_app: web.Application) -> None:
        http_app.router.add_put("/echo", echo)

    node_app = await node(http={"max_body_bytes": 2048}, http_mounts=[mount])
    host, port = node_app.http.bound  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as s:
        async with s.put(f"http://{host}:{port}/echo", data=b"x" * 100) as r:
            assert r.status == 200 and (await r.json())["size"] == 100
        async with s.put(f"http://{host}:{port}/echo", data=b"x" * 5000) as r:
            assert r.status == 413
        async with s.put(f"http://{host}:{port}/echo", data=b"") as r:
            assert r.status == 422 and (await r.json())["error"] == "empty body"
