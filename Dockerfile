# syntax=docker/dockerfile:1
# Operator image: `kubetrain` (the kopf operator and the offline tools). No torch in it.
#   with Docker:  docker build -t ghcr.io/kubetrain/operator:0.1.0 .
#   here:         bash images/build.sh   (buildah on a Debian base made with debootstrap)
# BASE_IMAGE: any Debian-like image with python3 (3.11) and its venv module.
# Behind a TLS-intercepting proxy: mount its CA bundle into the build and name it in the build
# argument PIP_CERT (images/build.sh does); it is read by pip, never copied into the image.
ARG BASE_IMAGE=python:3.11-slim

# deps: a virtualenv holding exactly images/operator.lock; cached until the lock changes.
# kubernetes.aio (the client's asyncio twin, 68 MB, a quarter of the image) is never imported.
FROM ${BASE_IMAGE} AS deps
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1
COPY images/build-tools.lock images/operator.lock /tmp/locks/
# Wheels are downloaded once into a cache mount (a wheelhouse kept between builds; PyPI's
# responses are often not HTTP-cacheable behind proxies), then installed from it without an index.
RUN --mount=type=cache,id=kubetrain-wheels,target=/var/cache/kubetrain-wheels \
    W=/var/cache/kubetrain-wheels \
    && python3 -m venv /opt/tools \
    && /opt/tools/bin/pip download --quiet --no-deps --require-hashes --only-binary=:all: --dest "$W" \
       -r /tmp/locks/build-tools.lock -r /tmp/locks/operator.lock \
    && /opt/tools/bin/pip install --quiet --no-index --find-links "$W" --no-deps --require-hashes -r /tmp/locks/build-tools.lock \
    && mkdir -p /opt/sbom && PYTHONWARNINGS=ignore::UserWarning /opt/tools/bin/cyclonedx-py requirements --output-reproducible --of JSON \
       -o /opt/sbom/sbom.cdx.json /tmp/locks/operator.lock \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/tools/bin/pip --python /opt/venv/bin/python install --quiet --no-index --find-links "$W" --no-deps --require-hashes \
       -r /tmp/locks/operator.lock \
    && rm -rf /opt/venv/lib/python3*/site-packages/kubernetes/aio

# app: the kubetrain wheel, installed under /app (a tree to lay over /); rebuilt when the source changes.
FROM deps AS app
# The user, as files laid over / by the final stage (which runs nothing: a RUN there would leave
# the build's mount points, e.g. the CA bundle's, behind as empty files).
RUN groupadd --system --gid 65532 kubetrain \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kubetrain \
    && mkdir -p /app/etc && cp -a /etc/passwd /etc/group /etc/shadow /etc/gshadow /app/etc/
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY trainer_image/kubetrain_trainer /src/trainer_image/kubetrain_trainer
RUN /opt/tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src \
    && /opt/tools/bin/pip --python /opt/venv/bin/python install --no-deps --root /app /tmp/wheels/kubetrain-*.whl \
    && PYTHONPATH=/app/opt/venv/lib/python3.11/site-packages /opt/venv/bin/python -c \
       "import importlib.util as u, sys; import kubetrain.cli; sys.exit(u.find_spec('torch') is not None)"

FROM ${BASE_IMAGE}
COPY --from=deps /opt/venv /opt/venv
# The SBOM (CycloneDX JSON) of the Python distributions installed above, made from the lock by the build.
COPY --from=deps /opt/sbom/sbom.cdx.json /usr/share/doc/kubetrain/sbom.cdx.json
COPY --from=app /app/ /
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080 8081
# Labels last: a new revision changes no layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kubetrain-operator" \
      org.opencontainers.image.description="Kubetrain operator (kopf) and offline tools; no torch" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/kubetrain/kubetrain" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.kubetrain.sbom="/usr/share/doc/kubetrain/sbom.cdx.json"
ENTRYPOINT ["kubetrain"]
CMD ["operator", "--all-namespaces"]
