# The outlast image: `outlast` is the entrypoint, so a container runs
#   docker run IMAGE server | worker --app MODULE | migrate | doctor | keys create ...
# Task code goes in by an image of your own built FROM this one (deploy/example/Dockerfile
# shows how) or by mounting a package at /app (the working directory, on sys.path).
# docs/how-to/deploy-with-docker.md.
#
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11), its venv module and useradd.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# A virtual environment, so the runtime stage copies one directory and no build tools.
RUN python3 -m venv /opt/outlast
WORKDIR /src
COPY pyproject.toml README.md ./
COPY outlast ./outlast
RUN /opt/outlast/bin/pip install --no-cache-dir --disable-pip-version-check ".[postgres]"

FROM ${BASE_IMAGE}
ENV PATH=/opt/outlast/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OUTLAST_HOST=0.0.0.0 \
    OUTLAST_PORT=8030
# An unprivileged user owns nothing but /app; the installed code is root's, read-only.
RUN useradd --system --user-group --home-dir /app --create-home --shell /usr/sbin/nologin outlast
COPY --from=build /opt/outlast /opt/outlast
WORKDIR /app
USER outlast
EXPOSE 8030
# The server's liveness (a worker serves no HTTP: compose and systemd disable this there).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/v1/health' % os.environ.get('OUTLAST_PORT', '8030'), timeout=2)"]
# Exec form: outlast is PID 1 and receives SIGTERM itself. A worker then stops claiming,
# finishes its runs within --shutdown-grace (30 s) and hands back the rest; give it a
# longer stop timeout than that (compose: stop_grace_period; docker stop -t 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["outlast"]
CMD ["server"]
