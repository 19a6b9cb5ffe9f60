"""What a worker process is sent of the settings (``betblock.dataplane.Sections``): every
section the data plane is built from, rebuilt equal to the control plane's, without the
settings loader."""

from __future__ import annotations

from dataclasses import fields

from betblock.dataplane import Sections
from config.settings import Settings


def test_sections_round_trip_equal_to_the_settings_tree() -> None:
    settings = Settings(
        dns={"listen": ["127.0.0.1:5353", "[::1]:5353"], "tcp": False, "workers": 3},
        acl={"allow": ["10.0.0.0/8"]},
        upstream={"servers": ["192.0.2.1", "[2001:db8::1]:5300"], "deadline": 2.5},
        cache={"max_entries": 7, "min_ttl": 5},
        rrl={"enabled": False, "exempt": []},
        policy={"sinkhole_ttl": 60, "cname_inspection": False},
        log={"level": "warning", "format": "console"},
    )
    sent = Sections.dump(settings)
    assert set(sent) == {f.name for f in fields(Sections)}
    rebuilt = Sections.load(sent)
    for f in fields(Sections):
        assert getattr(rebuilt, f.name) == getattr(settings, f.name), f.name
    assert rebuilt.upstream.addresses() == [("192.0.2.1", 53), ("2001:db8::1", 5300)]
