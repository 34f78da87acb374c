"""Every pinned version of the local cluster and Pulumi engine tools, in one place.

Change a pin here and `inferplane cluster tools` builds the new version beside the old one
(the cache is keyed by version). Each pin is a version the Go module proxy serves.
"""

from __future__ import annotations

# Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler), built from
# k8s.io/kubernetes with its staging modules replaced by their published k8s.io/* v0.X.Y.
# The unit tests validate rendered manifests against kubernetes-validate's schema of the same minor.
KUBERNETES_VERSION = "v1.37.2"
KUBERNETES_MINOR = "1.37"
KUBERNETES_STAGING_VERSION = "v0.37.2"

# etcd: Kubernetes >= 1.31 needs the health endpoints of etcd >= 3.5.11 / 3.4.29, so not
# Debian's 3.4.23. The `etcd` main package is the root of the server module.
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
ETCD_VERSION = "v3.6.16"

# The real node. Kubernetes >= 1.36's kubelet needs containerd 2.x; runc is built from its module
# source (with seccomp) rather than Debian's 1.1.5; kubelet, kube-proxy and the pause binary come
# from the same k8s.io/kubernetes as the control plane (KUBERNETES_VERSION).
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
CONTAINERD_VERSION = "v2.4.2"
RUNC_MODULE = "github.com/opencontainers/runc"
RUNC_VERSION = "v1.3.7"

# kwok stands in for kubelets: keeps fake nodes Ready and marks their pods Running.
KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_VERSION = "v0.8.0"
# The upstream Stage definitions kwok runs (read from the pinned module, not copied into the repo).
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)

# kind, for `cluster up --backend kind`. Where no Docker engine runs (as in CI here), kind's podman
# provider runs a node image of our own: kind's node files from this module, the binaries above,
# and kubeadm + kubectl from KUBERNETES_VERSION (cluster/kind_node.py).
KIND_MODULE = "sigs.k8s.io/kind"
KIND_VERSION = "v0.33.0"

# The Pulumi CLI (engine). The proxy serves pkg/v3 at v3.274.x but not v3.272.0, the newest Python
# SDK on PyPI; a CLI newer than the SDK is the supported direction.
PULUMI_MODULE = "github.com/pulumi/pulumi/pkg/v3"
PULUMI_VERSION = "v3.274.1"
# Upstream pkg/go.mod's own replace directives, repeated in the wrapper module.
PULUMI_REPLACES = {
    "github.com/pulumi/pulumi/sdk/v3": ("github.com/pulumi/pulumi/sdk/v3", PULUMI_VERSION),
    "github.com/atotto/clipboard": ("github.com/tgummerer/clipboard",
                                    "v0.0.0-20241001131231-d02d263e614e"),
}
# pulumi-language-python (module github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3)
# is refused by the module proxy here at every version (403): its main.go and -exec script come
# from a clone of the pulumi repository (INFERPLANE_PULUMI_SOURCE), compiled against sdk/v3 and
# pkg/v3 at PULUMI_VERSION from the proxy, so `pulumi up` runs Pulumi.yaml's program as for users.
PULUMI_LANGUAGE_PYTHON_MODULE = "github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3"
PULUMI_LANGUAGE_PYTHON_MAIN = "sdk/python/cmd/pulumi-language-python/main.go"
PULUMI_LANGUAGE_PYTHON_EXEC = "sdk/python/cmd/pulumi-language-python-exec"
PULUMI_SOURCE_DEFAULT = "/work/.mirror/pulumi+pulumi/repo"

# The Kubernetes resource provider. The proxy lists only this pseudo-version of provider/v4
# (a commit of 2026-01-15, between releases 4.24.0 and 4.29.0); the Python SDK on PyPI is newer
# (4.34.2). The engine uses the provider found on PATH whatever version the SDK asks for.
PULUMI_KUBERNETES_MODULE = "github.com/pulumi/pulumi-kubernetes/provider/v4"
PULUMI_KUBERNETES_VERSION = "v4.0.0-20260115033456-f47bc2d6f199"
# Upstream provider/go.mod replaces sdk/v4 with ../sdk of the same commit; the nearest published
# module is the one its go.mod requires.
PULUMI_KUBERNETES_REPLACES = {
    "github.com/pulumi/pulumi-kubernetes/sdk/v4": ("github.com/pulumi/pulumi-kubernetes/sdk/v4",
                                                   "v4.24.0"),
}
