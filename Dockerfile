# syntax=docker/dockerfile:1
# tasksd, the Hanzo Tasks node, as a small non-root image:
#   docker build -t hanzo-tasks .
#   docker run -p 7243:7243 -p 9999:9999 -v tasks-data:/var/lib/tasks hanzo-tasks
# helm/tasks runs it as a three-node Raft cluster.

# ---- build: a wheel of the project and of every dependency ------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The whole context (.dockerignore leaves out tests, local state and the
# venv): pyproject.toml decides which packages go into the wheel.
COPY . .
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: a virtualenv with the wheels, nothing else ---------------------
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels hanzo-tasks \
    && groupadd --system --gid 10001 tasks \
    && useradd --system --uid 10001 --gid tasks --home-dir /var/lib/tasks --shell /usr/sbin/nologin tasks \
    && mkdir -p /var/lib/tasks \
    && chown tasks:tasks /var/lib/tasks
WORKDIR /var/lib/tasks
VOLUME ["/var/lib/tasks"]
# HTTP API (and /metrics, /healthz, /readyz), ZAP, peer port (Raft).
EXPOSE 7243 9999 7300
USER 10001:10001
ENTRYPOINT ["tasksd"]
# A single node reachable from outside the container. Flags rank above the
# TASKSD_* environment and the --config file, so the chart replaces these
# arguments instead of adding to them.
CMD ["serve", "--http", "0.0.0.0:7243", "--zap", "0.0.0.0:9999", "--data-dir", "/var/lib/tasks"]
