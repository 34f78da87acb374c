"""The gateway image `make test` builds from the Dockerfile: one per source state, the stale ones
removed so repeated runs do not fill podman's store."""

from __future__ import annotations

import subprocess

from inferplane.cluster import images


def test_only_the_current_gateway_image_is_kept(gateway_image):
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
         "--filter", f"reference={images.GATEWAY_REPOSITORY}:dev-*"],
        capture_output=True, text=True, check=True, env=images.podman_environment())
    assert listed.stdout.split() == [gateway_image.reference]
    assert [p.name for p in images.images_dir().glob("gateway-*.tar")] == \
        [gateway_image.archive.name]
