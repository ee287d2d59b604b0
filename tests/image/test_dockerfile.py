"""compose/Dockerfile (for users with Docker) stays the image that compose/image/build.sh
builds here: same base, same Debian packages, same wheels and install steps, same entrypoint,
command, user, working directory and environment (compared with the built image's config)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import REPO, image_cache
from .runc import RawcapImage

pytestmark = pytest.mark.timeout(600)


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), " ".join(rest.split())))
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions(REPO / "compose" / "Dockerfile")
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def _packages() -> list[str]:
    lines = (REPO / "compose/image/packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _image_config(tag: str) -> dict:
    layout = image_cache() / "oci"
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [m for m in index["manifests"]
               if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    return json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())


def test_dockerfile_installs_what_build_sh_installs() -> None:
    final = _final_stage()
    build_sh = (REPO / "compose/image/build.sh").read_text()
    suite = re.search(r"^SUITE=(\w+)$", build_sh, re.M)
    assert suite and final[0] == ("FROM", f"debian:{suite.group(1)}-slim")
    assert "--variant=minbase" in build_sh  # what debian:<suite>-slim is made from
    runs = [arg for op, arg in final if op == "RUN"]
    copies = [arg for op, arg in final if op == "COPY"]
    # the package list is the one file both read; the wheels and their install are the same scripts
    assert any("compose/image/packages.txt" in c for c in copies)
    apt = "/tmp/image/packages.txt | xargs apt-get install -y --no-install-recommends"
    assert any(apt in r for r in runs)
    assert 'packages | paste -sd, -' in build_sh
    assert any("sh /tmp/image/install.sh /wheels all" in r for r in runs)
    stages = _instructions(REPO / "compose" / "Dockerfile")
    assert ("RUN", "sh /tmp/image/wheels.sh /src /wheels") in stages
    # the wheel stage copies exactly the packages that build.sh hashes and stages
    listed = {}
    for name in ("SRC_DIRS", "SRC_FILES"):
        m = re.search(rf"^{name}=\(([^)]*)\)$", build_sh, re.M)
        assert m, name
        listed[name] = m.group(1).split()
    copied = {src for op, arg in stages if op == "COPY" and not arg.startswith(("compose/", "--"))
              for src in arg.split()[:-1]}
    assert copied == {*listed["SRC_DIRS"], *listed["SRC_FILES"]}


def test_dockerfile_config_equals_the_built_image(image_tag: str) -> None:
    config = _image_config(image_tag)["config"]
    final = dict((op, arg) for op, arg in _final_stage() if op in ("ENTRYPOINT", "CMD", "USER", "WORKDIR"))
    assert json.loads(final["ENTRYPOINT"]) == config["Entrypoint"] == ["rawcap"]
    assert json.loads(final["CMD"]) == config["Cmd"]
    assert final["USER"] == config["User"] == "10001:10001"
    assert final["WORKDIR"] == config["WorkingDir"]
    env_arg = next(arg for op, arg in _final_stage() if op == "ENV")
    docker_env = dict(kv.split("=", 1) for kv in env_arg.split())
    assert docker_env == dict(kv.split("=", 1) for kv in config["Env"])


def test_image_holds_the_listed_packages(image: RawcapImage) -> None:
    status = (image.rootfs / "var/lib/dpkg/status").read_text()
    installed = {m.group(1) for m in re.finditer(r"^Package: (\S+)\nStatus: install ok installed",
                                                  status, re.M)}
    assert set(_packages()) <= installed
    # no usrmerge (and so no perl), docs and man pages are path-excluded as in -slim
    assert "usrmerge" not in installed and "perl" not in installed
    assert not list((image.rootfs / "usr/share/man").glob("*/*"))
    docs = image.rootfs / "usr/share/doc"
    # (dpkg keeps the directories and symlinks; no file but the licences)
    assert {p.name for p in docs.rglob("*") if p.is_file() and not p.is_symlink()} == {"copyright"}
