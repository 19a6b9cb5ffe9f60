"""A re-read configuration swaps the client ACL without a restart (SIGHUP path)."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import dns.rcode

from tests.conftest import NodeFactory, port_of


async def _rcode(port: int) -> int:
    r = await dns.asyncquery.udp(dns.message.make_query("allowed.test", "A"), "127.0.0.1", port=port, timeout=3)
    return r.rcode()


async def test_acl_change_applies_on_reload_both_ways(node: NodeFactory) -> None:
    app = await node(acl={"allow": ["10.0.0.0/8"]})
    port = port_of(app)
    assert await _rcode(port) == dns.rcode.REFUSED
    app._apply(app.settings.model_copy(update={"acl": app.settings.acl.model_copy(update={"allow": ["127.0.0.0/8"]})}))
    assert await _rcode(port) == dns.rcode.NOERROR
    app._apply(app.settings.model_copy(update={"acl": app.settings.acl.model_copy(update={"allow": ["192.0.2.0/24"]})}))
    # The memo of the old ACL must not leak the earlier decision for 127.0.0.1.
    assert await _rcode(port) == dns.rcode.REFUSED
