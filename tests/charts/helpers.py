"""Run helm and kubectl (the ones ``make setup`` builds) on the chart; parse what they render."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from rawcap.stack import find_kube

CHART = Path(__file__).resolve().parents[2] / "charts" / "rawcap"
VALUES = Path(__file__).with_name("values")
VALUES_FILES = sorted(p.name for p in VALUES.glob("*.yaml"))


def run(argv: list[str], *, check: bool = True, timeout: float = 180,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def helm(*args: str, check: bool = True, kubeconfig: Path | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    extra = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return run([str(find_kube("helm")), *args, *extra], check=check, timeout=timeout)


def kubectl(kubeconfig: Path, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run([str(find_kube("kubectl")), "--kubeconfig", str(kubeconfig), *args],
               check=check, input=input, timeout=timeout)


def template_text(*values: str, sets: tuple[str, ...] = (), namespace: str = "rawcap",
                  release: str = "rc", check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for v in values:
        args += ["-f", str(VALUES / v) if not v.startswith("/") else v]
    for s in sets:
        args += ["--set", s]
    return helm(*args, check=check)


def render(*values: str, sets: tuple[str, ...] = (), namespace: str = "rawcap",
           release: str = "rc") -> list[dict[str, Any]]:
    text = template_text(*values, sets=sets, namespace=namespace, release=release).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert name in found, f"no {kind} {name}; have {sorted(found)}"
    return found[name]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return dict(spec["containers"][0])
