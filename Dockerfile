# couchgate: a slim, non-root image. Build: docker build -t couchgate .
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.lock pyproject.toml README.md ./
COPY proxy ./proxy
# Only the runtime dependencies from the pinned lock (no test or lint tools).
RUN python -m venv /opt/couchgate \
 && /opt/couchgate/bin/pip install "aiohttp==3.14.5" "pydantic==2.14.3" "pydantic-settings==2.16.3" \
      "orjson==3.13.0" "python-jose[cryptography]==3.5.0" "rich==15.0.0" "prometheus-client==0.26.0" \
      --constraint requirements.lock \
 && /opt/couchgate/bin/pip install --no-deps .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin couchgate
COPY --from=build /opt/couchgate /opt/couchgate
ENV PATH=/opt/couchgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    COUCHGATE_HOST=0.0.0.0 \
    COUCHGATE_PORT=5988
USER 10001
EXPOSE 5988
# The port couchgate really listens on: COUCHGATE_PORT may be changed at `docker run`.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; port = os.environ.get('COUCHGATE_PORT', '5988'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/_couchgate/health', timeout=2).status == 200 else 1)"]
CMD ["couchgate", "serve"]
