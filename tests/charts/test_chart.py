"""charts/rawcap without a cluster: helm lint, helm template for every values file in
tests/charts/values/, what the rendered objects must hold, and bad values refused with a
message that names the key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from rawcap.config import load_config, parse_size
from schemas.topics import TOPIC_CONFIGS

from .helpers import CHART, VALUES, VALUES_FILES, by_kind, container, helm, one, render, template_text

AGENT = "rc-rawcap-agent"


@pytest.mark.parametrize("values", VALUES_FILES)
def test_lint_strict(values: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(VALUES / values)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_config_is_what_rawcap_reads(values: str, caplog: pytest.LogCaptureFixture) -> None:
    """The ConfigMap's values.yaml loads in rawcap's own config loader with no unknown key,
    and carries the user's values."""
    docs = render(values)
    text = one(docs, "ConfigMap", "rc-rawcap")["data"]["values.yaml"]
    user = yaml.safe_load((VALUES / values).read_text())
    cfg = _load(text)
    assert not [r for r in caplog.records if "unknown configuration key" in r.getMessage()]
    assert cfg.get("kafka.bootstrap") == (user.get("kafka", {}).get("bootstrap")
                                          or "rawcap-kafka-kafka-bootstrap.rawcap.svc:9092")
    raw = (user.get("tap", {}).get("capture", {}).get("raw") or {})
    assert cfg.get("tap.capture.raw.storageSize") == parse_size(raw.get("storageSize", "1Gi"))
    assert cfg.get("tap.namespaces") == user.get("tap", {}).get("namespaces", [])
    assert cfg.get("capture.codec") == user.get("agent", {}).get("codec", "zstd")
    assert "password" not in text.lower(), "a secret leaked into the ConfigMap"


def _load(text: str) -> Any:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        cfg = load_config(f.name, env={})
    return cfg


def test_agent_daemonset_has_least_privilege_and_probes() -> None:
    ds = one(render("minimal.yaml"), "DaemonSet", AGENT)
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["hostPID"] is True  # process context: tracepoint pids are host pids
    assert pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "BPF", "PERFMON"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert c["args"][0] == "capture" and "--metrics-port=49100" in c["args"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 49100, "protocol": "TCP"}]
    assert pod["terminationGracePeriodSeconds"] >= 15  # agent drains for up to 10 s
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["RAWCAP_CONFIG"]["value"] == "/etc/rawcap/values.yaml"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/var/lib/rawcap/buffer", "/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules",
                 "/usr/src", "/etc/rawcap", "/tmp"):
        assert path in mounts, path
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["buffer"]["hostPath"] == {"path": "/var/lib/rawcap/buffer", "type": "DirectoryOrCreate"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    # SYS_ADMIN only on request (kernels without CAP_BPF/CAP_PERFMON)
    ds = one(render("minimal.yaml", sets=("agent.sysAdmin=true",)), "DaemonSet", AGENT)
    caps = container(ds)["securityContext"]["capabilities"]["add"]
    assert caps == ["NET_RAW", "BPF", "PERFMON", "SYS_ADMIN"]


def test_consumers_deployments_pdbs_and_service_accounts() -> None:
    docs = render("full.yaml")
    deps = by_kind(docs, "Deployment")
    assert set(deps) == {f"rc-rawcap-{n}" for n in ("archive", "archive-tables", "dissect", "enrich",
                                                    "k8s-watch")}
    assert set(by_kind(docs, "PodDisruptionBudget")) == set(deps)
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["automountServiceAccountToken"] is name.endswith("k8s-watch"), name
        assert dep["spec"]["replicas"] == 2
        env = {e["name"]: e for e in c["env"]}
        # SASL credentials from the user's Secret, never in the ConfigMap
        assert env["RAWCAP_KAFKA_SASL_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "rawcap-kafka", "key": "password"}}
        assert env["RAWCAP_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["key"] == "username"
    assert container(deps["rc-rawcap-dissect"])["args"] == ["dissect", "--follow"]
    archive = container(deps["rc-rawcap-archive"])
    assert archive["envFrom"] == [{"secretRef": {"name": "rawcap-archive-s3"}}]
    tables = container(deps["rc-rawcap-archive-tables"])
    assert tables["args"] == ["archive", "tables"]
    assert tables["envFrom"] == [{"secretRef": {"name": "rawcap-archive-s3"}}]
    watch = container(deps["rc-rawcap-k8s-watch"])
    assert watch["args"] == ["k8s-watch", "--leader-elect", "--lease-name=rc-rawcap-k8s-watch",
                             "--lease-duration=10s"]
    cfg = _load(one(docs, "ConfigMap", "rc-rawcap")["data"]["values.yaml"])
    assert cfg.get("kafka.tls.caFile") == "/etc/rawcap/kafka-tls/ca.crt"
    assert cfg.get("kafka.securityProtocol") == "SASL_SSL" and cfg.get("archive.url") == "s3://traffic-archive/rawcap"
    assert cfg.get("archive.tables.flushInterval") == 30 * 60
    jobs = by_kind(docs, "Job")
    assert [container(j)["args"] for j in jobs.values()] == [
        ["dissect", "--from=-1h", "--to=now", "--node=node-7"],
        ["snapshot", "create", "--from=-2h", "--to=now", "--name=incident-4711"]]
    assert set(by_kind(docs, "ServiceMonitor")) == {"rc-rawcap-agent", "rc-rawcap-archive"}


@pytest.mark.parametrize(("api", "host"), [("10.0.0.1:6443", "10.0.0.1"), ("[fd00::1]:443", "fd00::1"),
                                           ("api.example:6443", "api.example")])
def test_api_server_address_and_host_network_for_clusters_without_kube_proxy(api: str, host: str) -> None:
    docs = render("minimal.yaml", sets=(f"k8sWatch.apiServer={api}", "consumers.hostNetwork=true"))
    deps = by_kind(docs, "Deployment")
    for name, dep in deps.items():
        env = {e["name"]: e.get("value") for e in container(dep)["env"]}
        pod = dep["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet", name
        if name.endswith("k8s-watch"):  # only k8s-watch talks to the API server
            port = api.rsplit(":", 1)[1]
            assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (host, port)
        else:
            assert "KUBERNETES_SERVICE_HOST" not in env, name
    for name, dep in by_kind(render("minimal.yaml"), "Deployment").items():  # the defaults: neither
        assert "hostNetwork" not in dep["spec"]["template"]["spec"], name
        assert "KUBERNETES_SERVICE_HOST" not in {e["name"] for e in container(dep)["env"]}, name


def test_rbac_is_list_watch_of_five_kinds_and_a_lease_only_for_standbys() -> None:
    docs = render("minimal.yaml")
    role = one(docs, "ClusterRole", "rc-rawcap-k8s-watch")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {(g, r, v) for g, r in (("", "pods"), ("", "services"), ("", "namespaces"),
                                              ("", "nodes"), ("discovery.k8s.io", "endpointslices"))
                       for v in ("get", "list", "watch")}
    assert not by_kind(docs, "Role"), "a lone watcher needs no Lease"
    binding = one(docs, "ClusterRoleBinding", "rc-rawcap-k8s-watch")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rc-rawcap-k8s-watch", "namespace": "rawcap"}]
    docs = render("minimal.yaml", sets=("k8sWatch.replicas=3",))
    lease = one(docs, "Role", "rc-rawcap-k8s-watch-lease")
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in lease["rules"]} == {
        (("create",), ()), (("get", "update"), ("rc-rawcap-k8s-watch",))}
    assert "--leader-elect" in container(one(docs, "Deployment", "rc-rawcap-k8s-watch"))["args"]


def test_kubeshark_keys_are_honoured() -> None:
    docs = render("kubeshark.yaml")
    ds = one(docs, "DaemonSet", AGENT)
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    assert c["image"] == "rawcap:0.1.0", "tap.docker names Kubeshark's images: it must be ignored"
    # tap.resources.sniffer, with Kubeshark's "0" = no limit left out
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "50Mi"}, "limits": {"memory": "5Gi"}}
    assert pod["tolerations"] == [{"operator": "Exists", "effect": "NoExecute"}]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "kubernetes.io/os"
    assert ds["spec"]["template"]["metadata"]["labels"]["team"] == "netops"
    assert ds["spec"]["template"]["metadata"]["annotations"]["owner"] == "netops@example.com"
    enrich = container(one(docs, "Deployment", "rc-rawcap-enrich"))
    assert enrich["resources"]["requests"] == {"cpu": "50m", "memory": "50Mi"}  # tap.resources.hub
    cfg = _load(one(docs, "ConfigMap", "rc-rawcap")["data"]["values.yaml"])
    assert cfg.get("log.level") == "warning"  # logLevel
    assert cfg.get("tap.regex") == "(catalo.*|front-end.*)"
    assert cfg.get("tap.excludedNamespaces") == ["kube-system"]
    assert cfg.get("tap.capture.stopAfter") == 600.0 and cfg.get("tap.capture.dbMaxSize") == 200 * 2**20
    dissect = one(docs, "Deployment", "rc-rawcap-dissect")["spec"]["template"]["spec"]
    calls = next(v for v in dissect["volumes"] if v["name"] == "calls")
    assert calls["emptyDir"]["sizeLimit"] == 200 * 2**20  # tap.capture.dbMaxSize
    # the newer Kubeshark spelling: dissection.enabled=false = stopped: no live dissector
    docs = render("kubeshark.yaml", sets=("tap.capture.dissection.enabled=false",))
    assert "rc-rawcap-dissect" not in by_kind(docs, "Deployment")
    cfg = _load(one(docs, "ConfigMap", "rc-rawcap")["data"]["values.yaml"])
    assert cfg.get("tap.capture.stopped") is True
    # raw capture off: no agent at all (it would exit at once and crash-loop)
    assert not by_kind(render("minimal.yaml", sets=("tap.capture.raw.enabled=false",)), "DaemonSet")


def test_strimzi_topics_match_what_rawcap_creates() -> None:
    docs = render("strimzi.yaml")
    kafka = one(docs, "Kafka", "rawcap-kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1"
    pool = one(docs, "KafkaNodePool", "rawcap-kafka-dual")
    assert pool["spec"]["roles"] == ["controller", "broker"] and pool["spec"]["replicas"] == 3
    topics = {t["spec"]["topicName"]: t["spec"] for t in by_kind(docs, "KafkaTopic").values()}
    assert set(topics) == set(TOPIC_CONFIGS)
    for name, spec in topics.items():
        want = dict(TOPIC_CONFIGS[name])
        if name == "rawcap.packets":
            want["retention.bytes"] = str(parse_size("512Mi"))
            assert spec["partitions"] == 12
        assert spec["config"] == want, name
        assert spec["replicas"] == 3
    assert not by_kind(render("minimal.yaml"), "Kafka")


def test_archive_tables_writer_follows_the_archive() -> None:
    """The Parquet writer of calls and flows runs beside the archive, never without it."""
    archive = ("archive.enabled=true", "archive.url=s3://b/p")
    assert "rc-rawcap-archive-tables" in by_kind(render("minimal.yaml", sets=archive), "Deployment")
    off = by_kind(render("minimal.yaml", sets=(*archive, "archiveTables.enabled=false")), "Deployment")
    assert "rc-rawcap-archive" in off and "rc-rawcap-archive-tables" not in off
    assert "rc-rawcap-archive-tables" not in by_kind(render("minimal.yaml"), "Deployment")


def test_network_policy_limits_consumers() -> None:
    pol = one(render("minimal.yaml"), "NetworkPolicy", "rc-rawcap-consumers")
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert pol["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    ports = {(p["port"], p["protocol"]) for p in pol["spec"]["egress"][0]["ports"]}
    assert (53, "UDP") in ports and (9092, "TCP") in ports and (80, "TCP") not in ports


BAD = [
    (("tap.capture.raw.storageSize=lots",), "storageSize"),
    (("kafka.securityProtocol=TLS",), "securityProtocol"),
    (("agent.metricsPort=70000",), "metricsPort"),
    (("k8sWatch.replicas=-1",), "replicas"),
    (("kafak.bootstrap=x:1",), "kafak"),
    (("kafka.bootstrap=no-port",), "bootstrap"),
    (("archive.enabled=true",), "url"),
    (("tap.regex=(unclosed",), "regex"),
    (("log.level=loud",), "level"),
    (("agent.codec=lz4",), "codec"),
    (("archiveTables.flushInterval=soon",), "flushInterval"),
    (("k8sWatch.apiServer=https://10.0.0.1",), "apiServer"),
]


@pytest.mark.parametrize(("sets", "key"), BAD, ids=[s[0][0] for s in BAD])
def test_bad_value_is_refused_naming_the_key(sets: tuple[str, ...], key: str) -> None:
    proc = template_text("minimal.yaml", sets=sets, check=False)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert key in proc.stderr, proc.stderr
    sets_args = [a for s in sets for a in ("--set", s)]
    lint = helm("lint", str(CHART), "-f", str(VALUES / "minimal.yaml"), *sets_args, check=False)
    assert lint.returncode != 0 and key in lint.stdout + lint.stderr


def test_missing_bootstrap_is_one_clear_line() -> None:
    proc = template_text(check=False)
    assert proc.returncode != 0
    assert "kafka.bootstrap is required (HOST:PORT of your Kafka), or set strimzi.enabled=true" in proc.stderr
