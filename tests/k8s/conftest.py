"""Fixtures of the pods e2e: a stack of its own with a control plane (``rawcap stack up
--k8s``), a worker node joined to it (tests/k8s/node.py), and the image in containerd.

The stack is not the session's: the chart's consumers read ``rawcap.packets`` from its
start, and ``k8s-watch`` publishes capture filters to ``rawcap.control`` that every agent
applies, so other tests' nodes and filters would leak in both ways; and a node joined to
the session's control plane would run whatever other tests left scheduled there.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rawcap.config import load_config
from rawcap.stack import Stack, cache_dir, find_kube
from tests.conftest import image_cache

from .node import Node

#: The chart's default ``image.repository`` as containerd names it (docker.io/library/...).
IMAGE = "docker.io/library/rawcap"


@pytest.fixture(scope="module")
def pods_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Kafka + MinIO + etcd/kube-apiserver/kube-controller-manager on free loopback ports."""
    st = Stack(tmp_path_factory.mktemp("pods-stack"), kafka_port=0, s3_port=0, bucket="rawcap-pods",
               kafka_heap="512m")
    try:
        st.up(load_config(env={}), timeout=300, k8s=True)
        yield st
    finally:
        st.down()


@pytest.fixture(scope="module")
def image_archive(image_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's image as an oci-archive (what ``ctr images import`` takes), copied
    under the cache's lock: a build of another checkout may drop old tags meanwhile."""
    out = tmp_path_factory.mktemp("image-archive") / "rawcap.oci.tar"
    with open(image_cache() / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["skopeo", "copy", "--quiet", f"oci:{image_cache() / 'oci'}:{image_tag}",
                        f"oci-archive:{out}:{image_tag}"], check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def node(pods_stack: Stack, image_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A Ready worker node with the image imported as ``rawcap:<image_tag>``."""
    tag = os.environ.get("RAWCAP_TEST_NETNS_TAG", "")
    n = Node(tmp_path_factory.mktemp("node"), kubeconfig=pods_stack.k8s.kubeconfig,
             ca_file=pods_stack.k8s.ca_file, bin_dir=cache_dir() / "bin", name=f"{tag}rawcap-node")
    try:
        n.start()
        n.import_image(image_archive, IMAGE)
        yield n
    finally:
        n.stop()
        subprocess.run([str(find_kube("kubectl")), "--kubeconfig", str(pods_stack.k8s.kubeconfig),
                        "delete", "node", n.name, "--ignore-not-found"], capture_output=True, timeout=60)
