# The edgeflow worker image: every unit of a compiled bundle runs it (docs/bundles.md, "The worker
# image"). Build it from the root of this repository, from the wheel of THIS checkout (the name
# `edgeflow` on PyPI belongs to a different project, so it is never installed by name):
#
#   pip wheel --no-deps -w dist . && docker build -f docker/worker.Dockerfile -t edgeflow-worker:$(python -c 'import edgeflow; print(edgeflow.__version__)') .
#
# The tag must be the version of the compiler that writes the bundles (WORKER_IMAGE in
# edgeflow/emit/units.py), and dist/ must hold exactly one edgeflow wheel.
# tests/test_dockerfile.py checks this file against the manifests the compiler generates.
FROM python:3.11-slim

# HOME=/tmp: the root filesystem is read-only when deployed and /tmp is the one writable place
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheel with its dependencies (never --no-deps): the runtime's libraries are core
# dependencies. The import at the end fails the build if anything is missing.
COPY dist/edgeflow-*.whl /tmp/
RUN set -eu; \
    set -- /tmp/edgeflow-*.whl; \
    if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then \
        echo "dist/ must hold exactly one edgeflow wheel, found: $*" >&2; exit 1; \
    fi; \
    pip install --no-cache-dir "$1"; \
    rm -f /tmp/edgeflow-*.whl; \
    python -c "import edgeflow.runtime.worker, onnxruntime"

# The worker's user and group (runAsUser/runAsGroup 10001 in the k8s manifests, user
# "10001:10001" in compose and in Azure IoT Edge createOptions), and the mount points of the
# bundles: the unit config, the unit's TLS files, the models; a sink's data folder is the
# worker's own, so that a new Docker volume mounted there (Azure IoT Edge) takes that owner.
RUN set -eu; \
    groupadd --gid 10001 edgeflow; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin edgeflow; \
    mkdir -p /etc/edgeflow/unit /etc/edgeflow/tls /var/lib/edgeflow/models /var/lib/edgeflow/data; \
    chown 10001:10001 /var/lib/edgeflow/data

USER 10001:10001

# Prometheus metrics (/metrics): 9400 (edgeflow.unit_config.METRICS_PORT) for the first unit on a
# device, the next ports for the next units there (unit.json `metrics_port`)
EXPOSE 9400-9499

ENTRYPOINT ["python", "-m", "edgeflow.runtime"]
CMD ["--config", "/etc/edgeflow/unit/unit.json"]
