"""Session fixtures shared by every test package.

``kube`` starts a private Kubernetes control plane the same way (``rawcap stack up --k8s``)
for the chart and watcher tests.

``stack`` starts a PRIVATE local stack (Kafka KRaft broker + MinIO) through the same code
as ``rawcap stack up``, on free ports in a temporary data directory, so that parallel test
sessions and a developer's own ``rawcap stack up`` never collide. ``cluster`` does the same
for ``rawcap stack up --brokers 3 --secure`` (three brokers, SASL_SSL, ACLs): the shape of a
production cluster, started once for the tests of failover, security and scale-out. Neither
ever skips: a test that needs a stack and cannot get it fails (run ``make setup``).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from rawcap.config import Config, load_config
from rawcap.stack import KubeCluster, Stack

REPO = Path(__file__).resolve().parents[1]


def image_cache() -> Path:
    """Where compose/image/build.sh keeps the image (``$RAWCAP_STACK_CACHE/image``)."""
    return Path(os.environ.get("RAWCAP_STACK_CACHE") or REPO / "compose" / ".cache") / "image"


@pytest.fixture(scope="session")
def image_tag() -> str:
    """The src-<key> tag of this checkout's container image in ``image_cache()/oci``, built if
    it is not (make setup builds it first; cached: a no-op when nothing changed, the rawcap
    layer alone when a source file did)."""
    r = subprocess.run(["bash", str(REPO / "compose/image/build.sh"), "--print-tag"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running private stack: ``.bootstrap``, ``.s3_endpoint``, ``.bucket``,
    ``.access_key``, ``.secret_key``, ``.data_dir``, ``stop_kafka()``/``start_kafka()``,
    ``stop_s3()``/``start_s3()`` (data survives), ``s3_store_kwargs()``, ``s3_env()``."""
    data_dir = tmp_path_factory.mktemp("stack")
    st = Stack(data_dir, kafka_port=0, s3_port=0, bucket="rawcap-test", kafka_heap="512m")
    try:
        st.up(load_config(env={}), timeout=240)
        yield st
    finally:
        st.down()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running private 3-broker secured stack (``rawcap stack up --brokers 3 --secure``):
    ``.brokers``, ``.kill_broker(N)``, ``.start_kafka()``, ``.config(user=...)``,
    ``.client_config`` (the operator's values file), ``.service_config(name)``."""
    data_dir = tmp_path_factory.mktemp("cluster")
    st = Stack(data_dir, kafka_port=0, s3_port=0, bucket="rawcap-test", brokers=3, secure=True)
    try:
        st.up(load_config(env={}), timeout=300)
        yield st
    finally:
        st.down()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A running private Kubernetes control plane (etcd + kube-apiserver +
    kube-controller-manager, built by ``make setup``) started through the same code as
    ``rawcap stack up --k8s``, on free loopback ports, once per session: ``.server``,
    ``.kubeconfig`` (admin), ``.ca_file``, ``.get(path)``. Tests that share it use their own
    namespaces. Never skips: without the binaries it fails (run ``make setup``)."""
    st = Stack(tmp_path_factory.mktemp("k8s-stack"), kafka_port=0, s3_port=0)
    try:
        st.k8s.start(timeout=240)
        yield st.k8s
    finally:
        st.k8s.stop()


@pytest.fixture(scope="session")
def make_config(stack: Stack) -> Callable[..., Config]:
    """``make_config({"tap.capture.raw.storageSize": "10Mi"}, kafka__clientId="x")`` -> a
    Config pointing at the private stack (kafka.bootstrap, stack.*), independent of the
    developer's environment. Keyword names use ``__`` for dots."""

    def build(overrides: Mapping[str, Any] | None = None, /, **kw: Any) -> Config:
        values: dict[str, Any] = {
            "kafka.bootstrap": stack.bootstrap,
            "kafka.clientId": f"rawcap-test-{uuid.uuid4().hex[:8]}",
            "stack.dataDir": str(stack.data_dir),
            "stack.kafkaPort": stack.kafka.port,
            "stack.s3Port": stack.s3.port,
            "stack.bucket": stack.bucket,
        }
        values.update(overrides or {})
        values.update({k.replace("__", "."): v for k, v in kw.items()})
        return load_config(overrides=values, env={})

    return build


@pytest.fixture(scope="session")
def cfg_factory(make_config: Callable[..., Config]) -> Callable[..., Config]:
    """Alias of ``make_config``."""
    return make_config
