"""What is in the rawcap image and how big each part is, read from the OCI layout itself.

    python3 compose/image/sizes.py LAYOUT_DIR TAG [--json]

Prints a table: the Debian layer split by package groups (the dependency closures, in the
layer's own dpkg database, of minbase, python3, python3-bpfcc and ca-certificates), the
dependencies layer split by top-level package of the venv, and rawcap's layer; uncompressed
bytes of regular files, and each layer's compressed (gzip blob) size. Standard library only.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import tarfile
from collections import Counter
from pathlib import Path

#: Groups of the Debian layer, in order: a package counts for the first group whose
#: closure holds it. "Debian minbase" is everything Essential or Priority: required, plus apt.
ROOTS = (
    ("Python 3.11 (Debian)", ("python3",)),
    ("bcc + LLVM/clang 14", ("python3-bpfcc",)),
    ("TLS CA bundle + openssl", ("ca-certificates",)),
)
SITE = "opt/rawcap/lib/python3.11/site-packages/"


def _manifest(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return json.loads(_blob(layout, m["digest"]).read_bytes())
    raise SystemExit(f"sizes.py: error: no tag {tag!r} in {layout}")


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def _files(layout: Path, layer: dict) -> tuple[dict[str, int], dict[str, bytes]]:
    """Regular files of a layer -> size; plus the dpkg database files' contents."""
    sizes: dict[str, int] = {}
    dpkg: dict[str, bytes] = {}
    with gzip.open(_blob(layout, layer["digest"])) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if not member.isfile():
                continue
            sizes[name] = member.size
            in_info = name.startswith("var/lib/dpkg/info/") and name.endswith(".list")
            if name == "var/lib/dpkg/status" or in_info:
                fh = tar.extractfile(member)
                assert fh is not None
                dpkg[name] = fh.read()
    return sizes, dpkg


def _packages(status: bytes) -> dict[str, dict[str, str]]:
    pkgs: dict[str, dict[str, str]] = {}
    for para in status.decode().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", para, re.M))
        if "Package" in fields and "installed" in fields.get("Status", ""):
            pkgs[fields["Package"]] = fields
    return pkgs


def _closure(roots: list[str], pkgs: dict[str, dict[str, str]]) -> set[str]:
    seen: set[str] = set()
    todo = [r for r in roots if r in pkgs]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        fields = pkgs[name]
        for dep in ",".join(fields.get(k, "") for k in ("Depends", "Pre-Depends")).split(","):
            for alt in dep.split("|"):
                alt_name = alt.strip().split(" ")[0].split(":")[0]
                if alt_name in pkgs:
                    todo.append(alt_name)
                    break
    return seen


def _debian_groups(sizes: dict[str, int], dpkg: dict[str, bytes]) -> Counter[str]:
    pkgs = _packages(dpkg.get("var/lib/dpkg/status", b""))
    owner: dict[str, str] = {}
    for name, data in dpkg.items():
        if not name.endswith(".list"):
            continue
        pkg = name.rsplit("/", 1)[1][: -len(".list")].split(":")[0]
        for line in data.decode(errors="replace").splitlines():
            path = line.lstrip("/")
            # merged /usr: /bin, /sbin, /lib* are symlinks into /usr
            if re.match(r"(bin|sbin|lib|lib32|lib64|libx32)/", path):
                path = "usr/" + path
            owner.setdefault(path, pkg)
    minbase = {n for n, f in pkgs.items() if f.get("Essential") == "yes" or f.get("Priority") == "required"}
    group_of: dict[str, str] = {p: "Debian minbase (+ apt)" for p in _closure([*minbase, "apt"], pkgs)}
    for label, roots in ROOTS:
        for p in _closure(list(roots), pkgs):
            group_of.setdefault(p, label)
    out: Counter[str] = Counter()
    for path, size in sizes.items():
        out[group_of.get(owner.get(path, ""), "Debian minbase (+ apt)")] += size
    return out


def report(layout: Path, tag: str) -> dict:
    manifest = _manifest(layout, tag)
    layers = manifest["layers"]
    rows: list[dict] = []
    for i, layer in enumerate(layers):
        sizes, dpkg = _files(layout, layer)
        compressed = layer["size"]
        if "var/lib/dpkg/status" in dpkg:
            parts = _debian_groups(sizes, dpkg)
            title = "Debian layer"
        elif any(p.startswith(SITE + "rawcap/") for p in sizes):
            parts = Counter({"rawcap": sum(sizes.values())})
            title = "rawcap layer"
        else:
            parts = Counter()
            for path, size in sizes.items():
                top = path[len(SITE):].split("/", 1)[0] if path.startswith(SITE) else "(venv, user)"
                parts[re.sub(r"-[^-]*\.dist-info$", "", top)] += size
            title = "dependencies layer"
        rows.append({"layer": i + 1, "title": title, "compressed": compressed,
                     "uncompressed": sum(sizes.values()), "parts": dict(parts.most_common())})
    return {"tag": tag, "layers": rows,
            "compressed": sum(r["compressed"] for r in rows),
            "uncompressed": sum(r["uncompressed"] for r in rows)}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--json"]
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    rep = report(Path(args[0]), args[1])
    if "--json" in argv:
        print(json.dumps(rep))
        return 0
    print("| layer | part | MB uncompressed | MB compressed (layer) |")
    print("|---|---|---:|---:|")
    for row in rep["layers"]:
        total, packed = _mb(row["uncompressed"]), _mb(row["compressed"])
        print(f"| {row['layer']} {row['title']} | **all** | {total} | {packed} |")
        parts = list(row["parts"].items())
        shown = parts[:8]
        for name, size in shown:
            print(f"| | {name} | {_mb(size)} | |")
        rest = sum(s for _, s in parts[8:])
        if rest:
            print(f"| | {len(parts) - 8} others | {_mb(rest)} | |")
    print(f"| **image** | | **{_mb(rep['uncompressed'])}** | **{_mb(rep['compressed'])}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
