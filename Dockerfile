# One image for every wanq service in docker-compose.yml: the workers, Flower, the provider
# simulator and the producer CLI. No secret is baked in: WANQ_API_KEY, the Redis password and
# Flower's credentials reach the containers through the environment at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package is built from (pyproject.toml lists producers, workers and ops).
COPY pyproject.toml /src/
COPY producers /src/producers/
COPY workers /src/workers/
COPY ops /src/ops/

# wanq with its dependencies (Flower among them, for the monitoring service). The source is
# dropped afterwards, so every command runs the installed package.
RUN cd /src \
    && pip install . \
    && cd / \
    && rm -rf /src

# A non-root user; the mount points of the named volumes belong to it (a new named volume
# takes the ownership of the directory it is mounted on).
RUN useradd --create-home --uid 10001 --user-group wanq \
    && mkdir -p /archive /flower /batches \
    && chown wanq:wanq /archive /flower
USER wanq
WORKDIR /home/wanq

CMD ["wanq", "--help"]
