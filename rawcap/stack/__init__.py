"""``rawcap stack``: a real local Kafka (Apache's KRaft broker jars) + S3 store (MinIO), no Docker;
with ``--k8s`` also a real Kubernetes control plane (etcd + kube-apiserver + controller manager).

Binaries come from ``compose/install-stack.sh`` (run by ``make setup``); everything the
stack writes lives in one data directory, so ``down``/``up`` keeps topics and objects.
"""

from ._k8s import KubeCluster, find_kube
from ._kafka import KafkaServer, kafka_answers
from ._paths import cache_dir, default_data_dir, find_kafka_jars, find_minio
from ._s3 import S3Server, create_bucket, s3_answers
from ._stack import Stack

__all__ = (
    "KafkaServer",
    "KubeCluster",
    "S3Server",
    "Stack",
    "cache_dir",
    "create_bucket",
    "default_data_dir",
    "find_kafka_jars",
    "find_kube",
    "find_minio",
    "kafka_answers",
    "s3_answers",
)
