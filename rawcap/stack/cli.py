"""``rawcap stack up | down | status [--json]``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import Config
from ._stack import Stack

__all__ = ("add_commands",)


def _stack(args: argparse.Namespace, cfg: Config) -> Stack:
    return Stack.from_config(cfg, data_dir=args.data_dir, kafka_port=args.kafka_port,
                             s3_port=args.s3_port, brokers=getattr(args, "brokers", None),
                             secure=getattr(args, "secure", None))


def _print(status: dict[str, Any], as_json: bool, data_dir: Any) -> None:
    if as_json:
        print(json.dumps(status))
        return
    k, s = status["kafka"], status["s3"]

    def state(up: bool) -> str:
        return "up" if up else "down"

    print(f"kafka  {state(k['up']):<5} bootstrap  {k['bootstrap']}")
    if len(k.get("brokers", ())) > 1:
        for b in k["brokers"]:
            print(f"       {state(b['up']):<5} node {b['id']}     {b['bootstrap']}  pid {b['pid']}")
    sec = k.get("security")
    if sec:
        print(f"       {sec['protocol']} {sec['mechanism']}  user {sec['username']}  "
              f"password {sec['password']}")
        print(f"       ca {sec['ca_file']}  values file {sec['client_config']}")
    print(f"s3     {state(s['up']):<5} endpoint   {s['endpoint']}  bucket {s['bucket']}")
    print(f"                   access_key {s['access_key']}  secret_key {s['secret_key']}")
    if "k8s" in status:
        k8s = status["k8s"]
        print(f"k8s    {state(k8s['up']):<5} server     {k8s['server']}")
        print(f"                   kubeconfig {k8s['kubeconfig']}")
    print(f"data   {data_dir}")


def _up(args: argparse.Namespace, cfg: Config) -> int:
    stack = _stack(args, cfg)
    status = stack.up(cfg, timeout=args.timeout, k8s=args.k8s)
    _print(status, args.json, stack.data_dir)
    return 0


def _down(args: argparse.Namespace, cfg: Config) -> int:
    stack = _stack(args, cfg)
    stopped = stack.down()
    if args.json:
        print(json.dumps({"stopped": stopped}))
    else:
        for name, was in stopped.items():
            print(f"{name:<6} {'stopped' if was else 'was not running'}")
    return 0


def _status(args: argparse.Namespace, cfg: Config) -> int:
    stack = _stack(args, cfg)
    status = stack.status()
    _print(status, args.json, stack.data_dir)
    return 0 if all(part["up"] for part in status.values()) else 1


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", default=None,
                        help="stack data directory (config stack.dataDir, env RAWCAP_STACK_DIR; "
                             "default ./.rawcap/stack)")
    common.add_argument("--kafka-port", type=int, metavar="PORT", default=None,
                        help="Kafka port (config stack.kafkaPort, default 9092; 0: any free port)")
    common.add_argument("--s3-port", type=int, metavar="PORT", default=None,
                        help="S3 port (config stack.s3Port, default 9000; 0: any free port)")
    common.add_argument("--json", action="store_true", help="print one JSON object")

    stack = sub.add_parser(
        "stack", parents=[parent], help="local dev stack: Kafka (KRaft) + S3-compatible store",
        description="A real local stack without Docker: Apache Kafka as a single-node KRaft "
                    "broker and a MinIO S3 server, installed by `make setup`.",
    )
    actions = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    up = actions.add_parser("up", parents=[parent, common],
                            help="start (idempotent), wait until both answer, create bucket and topics")
    up.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                    help="give up waiting after this long (default 180)")
    up.add_argument("--brokers", type=int, choices=(1, 3), default=None,
                    help="Kafka brokers: 1, or a 3-node KRaft cluster (topics get replication 3 "
                         "and min.insync.replicas 2); fixed when the data dir is first used")
    up.add_argument("--secure", action="store_true", default=None,
                    help="SASL_SSL only (SCRAM-SHA-512, a CA made on the spot), a user and ACLs "
                         "per service; writes <data-dir>/client.yaml for --config")
    up.add_argument("--k8s", action="store_true",
                    help="also start etcd + kube-apiserver + kube-controller-manager "
                         "(kubeconfig in `status --json`)")
    up.set_defaults(func=_up)
    actions.add_parser("down", parents=[parent, common],
                       help="stop both servers (data is kept)").set_defaults(func=_down)
    actions.add_parser("status", parents=[parent, common],
                       help="show endpoints and credentials; exit 1 unless all are up"
                       ).set_defaults(func=_status)
