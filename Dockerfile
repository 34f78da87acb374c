# The data-plane image: `inferplane gateway` (the vLLM pod's sidecar) and `inferplane simulator`
# (the GPU-free vLLM stand-in for kind and demos). Pin the base by digest in your registry
# mirror if you can; the tag below is a fixed patch release, never a floating one.
#
#   docker build -t ghcr.io/inferplane/inferplane:0.1.0 .
#   docker run --rm -p 8080:8080 ghcr.io/inferplane/inferplane:0.1.0 simulator --host 0.0.0.0 --port 8080
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
# Only what the wheel needs (pyproject's force-include packs templates/ and examples/).
COPY pyproject.toml README.md ./
COPY src ./src
COPY templates ./templates
COPY examples ./examples
RUN pip install . && rm -rf /build

# A fixed, unprivileged uid (the pod's securityContext may pin the same one).
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin inferplane
USER 10001:10001
WORKDIR /tmp

EXPOSE 8080
ENTRYPOINT ["inferplane"]
CMD ["gateway", "--config", "/etc/inferplane/config/gateway.yaml"]
