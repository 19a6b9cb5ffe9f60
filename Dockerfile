# betblock: multi-stage image. The package is built into a wheel and installed, so the image
# holds what `pip install betblock` gives, not the source tree.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/ config/
COPY resolver/ resolver/
COPY feeds/ feeds/
COPY hits/ hits/
COPY xfr/ xfr/
COPY betblock/ betblock/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# libcap2-bin only to grant the interpreter the one capability it needs (port 53 as non-root).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3)" \
    && groupadd --system --gid 10001 betblock \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/betblock --create-home betblock \
    && mkdir -p /etc/betblock
COPY config/container.toml /etc/betblock/betblock.toml
ENV BETBLOCK_DATA_DIR=/var/lib/betblock
VOLUME ["/var/lib/betblock"]
USER 10001:10001
WORKDIR /var/lib/betblock
EXPOSE 53/udp 53/tcp 80/tcp 8053/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8053/readyz', timeout=2)"]
ENTRYPOINT ["betblock"]
CMD ["serve", "--config", "/etc/betblock/betblock.toml"]
