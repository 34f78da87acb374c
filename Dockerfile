# The data-plane image: `inferplane gateway` (the vLLM pod's sidecar) and `inferplane simulator`
# (the GPU-free vLLM stand-in for local clusters and demos). The image is not published: build it
# and push it to your own (EU) registry, then set `image.gateway` in the deployment config.
#
#   docker build -t registry.example.eu/inferplane/inferplane:0.1.0 .
#   docker push registry.example.eu/inferplane/inferplane:0.1.0
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module. Pin it by digest in
# your mirror if you can. `make image` builds one from Debian packages (mmdebstrap), no registry.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/inferplane/bin:$PATH

WORKDIR /build
# Exactly what the wheel needs: pyproject's force-include packs templates/, examples/ and charts/.
# tests/unit/test_image.py builds the wheel from this COPY set, so a missing path fails there.
COPY pyproject.toml README.md ./
COPY src ./src
COPY templates ./templates
COPY examples ./examples
COPY charts ./charts
# A venv, not the system site-packages (Debian's python refuses `pip install` there, PEP 668).
# [postgres]: the ledger shipper to the central PostgreSQL.
# BUILD_CA_BUNDLE: behind a TLS-inspecting proxy, the path of a CA bundle mounted for this step only
# (podman build -v host.crt:/run/build-ca.crt:ro --build-arg BUILD_CA_BUNDLE=/run/build-ca.crt);
# nothing of it stays in the image.
ARG BUILD_CA_BUNDLE=
RUN python3 -m venv /opt/inferplane \
    && ${BUILD_CA_BUNDLE:+env PIP_CERT=$BUILD_CA_BUNDLE} /opt/inferplane/bin/pip install ".[postgres]" \
    && rm -rf /build

# A fixed, unprivileged uid (the pod's securityContext runs it as its own runAsUser anyway).
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin inferplane
USER 10001:10001
WORKDIR /tmp

EXPOSE 8080
ENTRYPOINT ["inferplane"]
CMD ["gateway", "--config", "/etc/inferplane/config/gateway.yaml"]
