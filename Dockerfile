# betblock image (minimal for now; the operations issue completes it: healthcheck, volume, API port).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY resolver ./resolver
COPY feeds ./feeds
COPY hits ./hits
COPY betblock ./betblock
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/betblock --create-home betblock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER betblock
EXPOSE 53/udp 53/tcp
ENV BETBLOCK_DNS__LISTEN='["0.0.0.0:53"]'
ENTRYPOINT ["betblock"]
CMD ["serve"]
