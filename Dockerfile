# smm-gateway: `docker build -t smm-gateway .` then
#   docker run -p 8000:8000 -v smmgw-data:/data -e SMMGW_UPSTREAM_KEY=... smm-gateway
# The default database is a SQLite file in /data (the working directory); set
# SMMGW_DATABASE_URL=postgresql://... for PostgreSQL. Other commands run the same way:
#   docker run --rm -v smmgw-data:/data smm-gateway customers list

# --- builder: the project and its dependencies, installed into a virtualenv -----------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install /wheels/*.whl

# --- final: the virtualenv only, run as an unprivileged user ------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin smmgw \
    && mkdir -p /data \
    && chown smmgw:smmgw /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /data
VOLUME ["/data"]
USER smmgw

EXPOSE 8000
# Healthy while /healthz answers 200 (the database reachable). Python's urllib, not curl: the
# slim image has no curl. A non-200 reply or none raises, and the check exits 1 (unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["smm-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
