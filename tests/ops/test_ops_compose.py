"""compose.yaml, checked without Docker: its wiring matches the Dockerfile (ports, volume,
config path, user's capabilities) and every setting it passes exists and validates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
ENV = {"POSTGRES_PASSWORD": "pw-for-tests", "BETBLOCK_ADMIN_TOKEN": "admin-token-for-tests-0123456789"}


def _subst(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} must be set: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def _service(name: str) -> dict[str, Any]:
    return COMPOSE["services"][name]


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path or volume name (defaults substituted)."""
    out = {}
    for v in svc["volumes"]:
        source, target = _subst(v, {}).split(":")[:2]
        out[target] = source
    return out


def test_ports_volume_and_config_match_the_dockerfile() -> None:
    svc = _service("betblock")
    assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert (ROOT / svc["build"]["dockerfile"]).is_file()
    exposed = set(re.search(r"^EXPOSE (.*)$", DOCKERFILE, re.M).group(1).split())  # type: ignore[union-attr]
    published = set()
    for spec in svc["ports"]:
        target, _, proto = spec.rpartition(":")[2].partition("/")
        published.add(f"{target}/{proto or 'tcp'}")
    assert published == exposed
    volume = json.loads(re.search(r"^VOLUME (.*)$", DOCKERFILE, re.M).group(1))[0]  # type: ignore[union-attr]
    mounts = _mounts(svc)
    assert mounts[volume] in COMPOSE["volumes"]  # a named volume, kept across upgrades
    cmd = json.loads(re.search(r"^CMD (.*)$", DOCKERFILE, re.M).group(1))  # type: ignore[union-attr]
    config_path = cmd[cmd.index("--config") + 1]
    assert (ROOT / mounts[config_path]).is_file()


def test_capabilities_are_only_the_bind_one() -> None:
    svc = _service("betblock")
    assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["NET_BIND_SERVICE"]
    assert "no-new-privileges:true" not in svc.get("security_opt", [])  # would void the file capability
    assert re.search(r"^USER 10001", DOCKERFILE, re.M)


def test_postgres_is_healthy_before_betblock_and_the_dsn_points_at_it() -> None:
    svc, pg = _service("betblock"), _service("postgres")
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert pg["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    env = {k: _subst(str(v), ENV) for k, v in svc["environment"].items()}
    assert env["BETBLOCK_HITS__STORE"] == "postgres"
    dsn = env["BETBLOCK_HITS__POSTGRES_DSN"]
    m = re.fullmatch(r"postgresql://(\w+):([^@]+)@(\w+):5432/(\w+)", dsn)
    assert m is not None
    user, password, host, db = m.groups()
    assert host == "postgres" and (user, db) == (pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"])
    assert password == ENV["POSTGRES_PASSWORD"]
    with pytest.raises(KeyError):  # compose refuses to start without the secrets
        _subst(str(svc["environment"]["BETBLOCK_HITS__POSTGRES_DSN"]), {})


def test_every_setting_passed_exists_and_the_result_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _service("betblock")
    env = {k: _subst(str(v), ENV) for k, v in svc["environment"].items()}
    for key in env:
        section, _, field = key.removeprefix("BETBLOCK_").lower().partition("__")
        assert section in Settings.model_fields, key
        annotation = Settings.model_fields[section].annotation
        assert field in annotation.model_fields, key  # type: ignore[union-attr]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(ROOT / _mounts(svc)["/etc/betblock/betblock.toml"])
    assert settings.hits.store == "postgres"
    assert settings.hits.postgres_dsn is not None and "@postgres:5432/betblock" in settings.hits.postgres_dsn.get_secret_value()
    assert settings.http.admin_token is not None
    # The listeners are the ports the service publishes.
    assert [p for _h, p in settings.dns.listen_addresses()] == [53]
    assert settings.http.address()[1] == 8053 and settings.warning_page.address()[1] == 80
