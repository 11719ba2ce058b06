# The edgeflow training image: the SuperLinks, SuperNodes and coordinator of a compiled bundle's
# trainings run it (docs/training.md, "Deploying"). Build it from the root of this repository,
# from the wheel of THIS checkout, with the training extra (Flower, prv-accountant):
#
#   pip wheel --no-deps -w dist . && docker build -f docker/train.Dockerfile -t edgeflow-train:$(python -c 'import edgeflow; print(edgeflow.__version__)') .
#
# The tag must be the version of the compiler that writes the bundles (TRAIN_IMAGE in
# edgeflow/emit/training.py). A training's `samples` and `trainer` are the user's code: derive an
# image that adds them under /opt/edgeflow/code (the spec's code_root), or installs them.
# tests/test_dockerfile.py checks this file against the manifests the compiler generates.
FROM python:3.11-slim

# HOME=/tmp: the root filesystem is read-only when deployed and /tmp is the one writable place
# besides an aggregator's volume; Flower never phones home (telemetry, update checks)
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

# The wheel with the training extra; the imports at the end fail the build if anything is missing
COPY dist/edgeflow-*.whl /tmp/
RUN set -eu; \
    set -- /tmp/edgeflow-*.whl; \
    if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then \
        echo "dist/ must hold exactly one edgeflow wheel, found: $*" >&2; exit 1; \
    fi; \
    pip install --no-cache-dir "$1[train]"; \
    rm -f /tmp/edgeflow-*.whl; \
    python -c "import edgeflow.federation.app, edgeflow.federation.deploy, prv_accountant"; \
    command -v flower-superlink; \
    command -v flower-supernode

# The user (runAsUser/runAsGroup 10001 in the k8s manifests, user "10001:10001" in compose) and the
# mount points: the spec files, the TLS files, the models, the user's code, and an aggregator's
# state, owned by that user so that a new Docker volume mounted there takes that owner.
RUN set -eu; \
    groupadd --gid 10001 edgeflow; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin edgeflow; \
    mkdir -p /etc/edgeflow/train /etc/edgeflow/train-certs /etc/edgeflow/superlink-tls /etc/edgeflow/supernode-tls /var/lib/edgeflow/models /var/lib/edgeflow/train /opt/edgeflow/code; \
    chown 10001:10001 /var/lib/edgeflow/train

USER 10001:10001

# The SuperLink's API (9092, + 10 per further training of the app)
EXPOSE 9092

CMD ["python", "-m", "edgeflow.federation.deploy", "--help"]
