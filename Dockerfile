# The supervisor as a container image: PID 1 of its own container, running as a non-root user,
# the bundled services on all interfaces (etc/container.toml). See README, "Container image".
#
#   docker build -t socket-supervisor .
#   docker run -d --name sv -p 127.0.0.1:7007:7007 -p 127.0.0.1:9464:9464 socket-supervisor

# Pinned by version; both stages use it, so the venv built in the first runs in the second.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# -- build: the project's wheel, installed with its dependencies into /opt/venv ---------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY supervisor/ supervisor/
COPY services/ services/
COPY etc/supervisor.toml etc/
# The venv gets no pip of its own: the base image's pip installs into it (--python).
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir \
        --disable-pip-version-check --no-compile /wheels/*.whl \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# -- the image: the venv, the container configuration, an unprivileged user --------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="socket-supervisor" \
      org.opencontainers.image.description="A super-server hosting many socketserver servers in one process" \
      org.opencontainers.image.licenses="MIT"
# A fixed uid/gid, so that mounted files and Kubernetes' runAsNonRoot can name it. /run/supervisor
# holds the pidfile and the control socket that `docker exec NAME supervisor status` talks to;
# group 0 may write it too, for platforms that run images under an arbitrary uid in group 0.
RUN groupadd --gid 10001 supervisor \
    && useradd --uid 10001 --gid supervisor --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin supervisor \
    && install -d -o supervisor -g 0 -m 0775 /run/supervisor
COPY --from=build /opt/venv /opt/venv
COPY etc/container.toml /etc/supervisor/supervisor.toml
ENV PATH=/opt/venv/bin:$PATH \
    SUPERVISOR_CONFIG=/etc/supervisor/supervisor.toml \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 7007/tcp 7007/udp 7009/tcp 7013/tcp 7017/tcp 7019/tcp 7037/tcp 7037/udp 7080/tcp 9464/tcp
# The supervisor handles SIGTERM (drain, then exit 0) and SIGINT itself, as PID 1 must, and
# reaps every orphan re-parented to it: no init shim is needed.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["supervisor", "health", "--timeout", "4"]
ENTRYPOINT ["supervisor", "run"]
