"""Pull an image from an OCI/Docker registry into a local OCI layout with the standard library.

Used for ``docker://`` sources when skopeo is not installed (the OS and seed images do not ship
it): anonymous or bearer-token (``WWW-Authenticate: Bearer``) access, OCI and Docker v2
manifests, indexes resolved to linux/amd64, every blob checked against its digest.
Registries named in ``ELEMENTAL_INSECURE_REGISTRIES`` (comma separated ``host[:port]``) are
reached over plain HTTP, like skopeo's ``--src-tls-verify=false``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elemental_common.errors import die

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[1], MANIFEST_TYPES[3]


def parse_ref(ref: str) -> tuple[str, str, str]:
    """``[host[:port]/]repo[:tag][@digest]`` → (host, repository, tag or digest)."""
    name, at, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, repo = first, rest
    else:
        host, repo = "registry-1.docker.io", name
        if "/" not in repo:
            repo = "library/" + repo
    if at:
        return host, repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo, digest
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = repo.rsplit(":", 1)
    else:
        tag = "latest"
    return host, repo, tag


def insecure_registries() -> set[str]:
    return {h.strip() for h in os.environ.get("ELEMENTAL_INSECURE_REGISTRIES", "").split(",") if h.strip()}


class Registry:
    def __init__(self, host: str, repo: str, timeout: float = 120) -> None:
        insecure = {
            h.strip() for h in os.environ.get("ELEMENTAL_INSECURE_REGISTRIES", "").split(",") if h.strip()
        }
        scheme = "http" if host in insecure else "https"
        self.base = f"{scheme}://{host}/v2/{repo}"
        self.repo = repo
        self.timeout = timeout
        self.token = ""

    def _open(self, path: str, accept: str = "") -> Any:
        for attempt in range(2):
            req = urllib.request.Request(self.base + path)
            if accept:
                req.add_header("Accept", accept)
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            try:
                return urllib.request.urlopen(req, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                challenge = exc.headers.get("WWW-Authenticate", "")
                if exc.code == 401 and attempt == 0 and challenge.lower().startswith("bearer "):
                    self.token = self._get_token(challenge)
                    continue
                die(
                    f"{self.base}{path}: HTTP {exc.code} {exc.reason}", "check the image reference and access"
                )
            except (urllib.error.URLError, OSError) as exc:
                die(
                    f"cannot reach {self.base}{path}: {exc}",
                    "the registry must be reachable (plain HTTP: set ELEMENTAL_INSECURE_REGISTRIES)",
                )
        die(f"{self.base}{path}: unauthorized")

    def _get_token(self, challenge: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm:
            die(f"registry asked for a token without a realm: {challenge}")
        params.setdefault("scope", f"repository:{self.repo}:pull")
        url = realm + "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                data = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            die(f"cannot get a registry token from {realm}: {exc}")
        return str(data.get("token") or data.get("access_token") or "")

    def manifest(self, reference: str) -> tuple[bytes, str]:
        with self._open(f"/manifests/{reference}", ", ".join(MANIFEST_TYPES)) as resp:
            body: bytes = resp.read()
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        media = media or str(json.loads(body).get("mediaType", ""))
        if reference.startswith("sha256:") and "sha256:" + hashlib.sha256(body).hexdigest() != reference:
            die(f"manifest {reference} does not match its digest")
        return body, media

    def image_manifest(self, reference: str) -> tuple[bytes, str]:
        body, media = self.manifest(reference)
        if media in INDEX_TYPES or "manifests" in json.loads(body):
            for m in json.loads(body).get("manifests", []):
                plat = m.get("platform") or {}
                if plat.get("os", "linux") == "linux" and plat.get("architecture", "amd64") == "amd64":
                    return self.manifest(m["digest"])
            die(f"{self.base}:{reference} has no linux/amd64 image")
        return body, media

    def copy_blob(self, digest: str, write: Callable[[bytes], object], chunk: int = 1 << 20) -> int:
        """Stream blob `digest` into `write` (a slot partition: no copy on disk first), checking
        the digest once it has all gone through; returns its size."""
        h = hashlib.sha256()
        n = 0
        with self._open(f"/blobs/{digest}") as resp:
            for buf in iter(lambda: resp.read(chunk), b""):
                h.update(buf)
                write(buf)
                n += len(buf)
        if f"sha256:{h.hexdigest()}" != digest:
            die(f"blob {digest} from {self.base} does not match its digest", "the registry's copy is damaged")
        return n

    def blob(self, digest: str, dest: Path) -> None:
        if dest.is_file():
            return
        tmp = dest.with_name(dest.name + ".part")
        h = hashlib.sha256()
        with self._open(f"/blobs/{digest}") as resp, open(tmp, "wb") as f:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
        if f"sha256:{h.hexdigest()}" != digest:
            tmp.unlink(missing_ok=True)
            die(f"blob {digest} from {self.base} does not match its digest")
        tmp.rename(dest)


def inspect(ref: str) -> None:
    """Fail early (before the disk is touched) when the image cannot be resolved."""
    host, repo, reference = parse_ref(ref)
    Registry(host, repo, timeout=60).image_manifest(reference)


def pull(ref: str, layout: Path, tag: str) -> None:
    """Copy `ref` into the OCI layout `layout` under `tag`."""
    host, repo, reference = parse_ref(ref)
    reg = Registry(host, repo)
    body, media = reg.image_manifest(reference)
    manifest = json.loads(body)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for desc in [manifest["config"], *manifest.get("layers", [])]:
        algo, _, hexd = str(desc["digest"]).partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
            die(f"unsupported digest {desc['digest']}")
        reg.blob(desc["digest"], blobs / hexd)
    digest = hashlib.sha256(body).hexdigest()
    (blobs / digest).write_bytes(body)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": media or MANIFEST_TYPES[0],
                "digest": f"sha256:{digest}",
                "size": len(body),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def resolve(ref: str, timeout: float = 60) -> str:
    """The digest of the linux/amd64 image manifest `ref` names now (a tag may move; a digest pins it)."""
    host, repo, reference = parse_ref(ref)
    body, _ = Registry(host, repo, timeout=timeout).image_manifest(reference)
    return "sha256:" + hashlib.sha256(body).hexdigest()


def pinned(ref: str, digest: str) -> str:
    """`ref` with its tag replaced by `digest` (``host/repo@sha256:…``), so a pull fetches exactly it."""
    host, repo, _ = parse_ref(ref)
    return f"{host}/{repo}@{digest}"
