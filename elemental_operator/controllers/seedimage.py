"""SeedImage: build a seed (ISO or raw disk) with the registration embedded, serve it, clean it up.

Elemental builds in a pod from ``spec.baseImage``, a container image carrying the seed ISO under
``/elemental-iso/``; we run the build as a subprocess. The default command is ``python -m
iso.repack``: it pulls the base image once (cached by digest in ``<state>/seedimage-bases/``) and
repacks its ISO with the registration file and ``spec.cloud-config`` (``type: raw``: a disk of the
installed layout). An empty ``spec.baseImage`` means the operator's default base
(``--seedimage-base``: our own seed as ``make iso`` publishes it, ``oci:$OUT/seed-image``). A
custom command (``--seedimage-command``) may use the placeholders {registration} {cloud_config}
{output} {workdir} {base_image} {type} {cache} {progress} and must write {output}.

Artifacts are cached by a hash of every input (registration file, cloud-config, base image and,
for a local layout, its manifest digest, type, command), so an identical SeedImage reuses the file
and any edit (Elemental #456) produces a new one. The file lives at
``<state>/seedimages/<hash>/<file>``, built in ``<hash>.work/``; the server finds it through the
annotation ``elemental.cattle.io/seedimage-artifact: <hash>/<file>``. Build steps show in the
``SeedImageReady`` condition's message; a failure is that condition with the builder's error line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from elemental_common.consts import SEEDIMAGE_ARTIFACT_ANNOTATION
from elemental_common.errors import Die
from elemental_common.run import spawn
from elemental_operator.context import OperatorContext
from elemental_operator.controllers.base import (
    Controller,
    condition_true,
    get_condition,
    is_deleting,
    owner_ref,
    parse_time,
    random_token,
    set_condition,
)
from elemental_operator.controllers.managedosimage import marshal_cloud_config
from elemental_operator.store.base import NotFound, Resource

log = logging.getLogger(__name__)

DEFAULT_COMMAND = (
    "{python} -m iso.repack --base={base_image} --cache {cache} --registration {registration} "
    "--cloud-config {cloud_config} --type {type} --output {output} --progress {progress}"
)
# The default base: what `make iso` publishes (iso/seedimage.py), under $OUT.
SEED_IMAGE_LAYOUT = "seed-image"
_BUILD_ERROR = re.compile(r"^[\w.-]+: error: (.*)$")
# What the artifact annotation may hold: <input digest>/<registration name>.<type>. Checked where
# it is written (controller, admin API) and again where it is read (download handler).
_ARTIFACT_REF = re.compile(r"^[0-9a-f]{24}/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\.(iso|raw)$")


def valid_artifact_ref(ref: str) -> bool:
    return bool(_ARTIFACT_REF.match(ref)) and ".." not in ref


def artifact_path(state_dir: Path, ref: str, name: str) -> Path | None:
    """The file ``name`` (the artifact or its ``.sha256``) of artifact ``ref``, or None unless
    it is a regular file inside that artifact's own build directory ``<state>/seedimages/<digest>``
    once every symlink is resolved (issue 11: the annotation ``../admin-token`` served the
    admin token to anyone)."""
    if not valid_artifact_ref(ref):
        return None
    digest, _, filename = ref.partition("/")
    if name not in (filename, filename + ".sha256"):
        return None
    root = (Path(state_dir) / "seedimages" / digest).resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path


def client_registration_file(registration: Resource, ctx: OperatorContext) -> dict[str, Any]:
    """The registration file baked into seed images (``elemental.registration``, brief §1.1).

    Prefers the registration engineer's ``registration_file``; this fallback keeps seed images
    and ``<state>/registration.yaml`` working while that module is absent.
    """
    try:
        from elemental_operator.registration.handler import registration_file
    except ImportError:
        reg = ((registration.get("spec") or {}).get("config") or {}).get("elemental", {}).get(
            "registration"
        ) or {}
        out: dict[str, Any] = {"url": (registration.get("status") or {}).get("registrationURL", "")}
        out["ca-cert"] = ctx.ca_cert_pem
        for key in ("emulate-tpm", "emulated-tpm-seed", "no-smbios", "auth"):
            if key in reg:
                out[key] = reg[key]
        return {"elemental": {"registration": out}}
    return registration_file(registration, ctx)


def default_base(base: str | Path | None = None) -> str:
    """The base image reference for SeedImages without ``spec.baseImage``: ``base`` as given when
    it is a reference; a directory is an OCI layout, or an ``$OUT`` holding ``seed-image/``
    (the operator container mounts ``out/`` on /srv/elemental)."""
    text = str(base) if base else os.environ.get("OUT") or "out"
    if ":" in text and not Path(text).is_dir():
        return text
    path = Path(text)
    if not (path / "index.json").is_file():
        path = path / SEED_IMAGE_LAYOUT
    return f"oci:{path.resolve()}"


def _layout_stamp(ref: str) -> str:
    """For an ``oci:`` layout, a hash of its index (a rebuilt seed is a new input); else ""."""
    if not ref.startswith("oci:"):
        return ""
    rest = ref[4:]
    path, _, tag = rest.rpartition(":")
    layout = Path(path if path and "/" not in tag else rest)
    try:
        return hashlib.sha256((layout / "index.json").read_bytes()).hexdigest()
    except OSError:
        return ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _failure(rc: int | None, log_text: str) -> str:
    """The condition message of a failed build: the builder's own error line (and hint) when it
    printed one, else the exit status and the log's tail."""
    lines = log_text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        m = _BUILD_ERROR.match(lines[i])
        if m:
            # a failed tool's error ends with ':' and its last output lines follow, then the hint
            rest = lines[i + 1 : i + 4]
            hint = next((x.strip() for x in rest if x.startswith("  hint:")), "")
            detail = [x.strip() for x in rest if x.strip() and not x.startswith("  hint:")]
            text = m.group(1) + (" " + " / ".join(detail[:2]) if m.group(1).endswith(":") and detail else "")
            return text + (f" ({hint})" if hint else "")
    return f"build exited {rc}: {log_text[-1500:]}"


class SeedImageController(Controller):
    kind = "SeedImage"
    watches = ("MachineRegistration",)
    resync = 300.0

    def __init__(
        self,
        ctx: OperatorContext,
        state_dir: Path,
        command: str | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        super().__init__(ctx)
        self.cache = Path(state_dir) / "seedimages"
        self.bases = Path(state_dir) / "seedimage-bases"
        self.command = command or DEFAULT_COMMAND
        self.default_base = default_base(base_dir)
        self.builds: dict[str, subprocess.Popen[bytes]] = {}
        self.running: dict[str, str] = {}  # key -> input digest of its running build
        # key -> input digest of a build that failed: not started again for the same inputs
        # (else every status write would restart it) until retriggerBuild or an input change.
        # In memory: an operator restart retries once.
        self.failed: dict[str, str] = {}

    def map_event(self, event: Any) -> list[tuple[str, str]]:
        reg = event.object
        ns = reg["metadata"]["namespace"]
        return [
            (ns, s["metadata"]["name"])
            for s in self.store.list(self.kind, ns)
            if ((s.get("spec") or {}).get("registrationRef") or {}).get("name") == reg["metadata"]["name"]
        ]

    def reconcile(self, namespace: str, name: str) -> float | None:
        try:
            si = self.store.get(self.kind, namespace, name)
        except NotFound:
            self._sweep()
            return None
        if is_deleting(si):
            return None
        spec = si.get("spec") or {}
        status = si.setdefault("status", {})
        before = json.dumps(status, sort_keys=True)
        key = f"{namespace}/{name}"
        if spec.get("retriggerBuild"):
            self.failed.pop(key, None)
            si["spec"]["retriggerBuild"] = False
            si["metadata"].setdefault("annotations", {}).pop(SEEDIMAGE_ARTIFACT_ANNOTATION, None)
            si = self.store.update(si)
            si["status"] = {}
            self.store.update_status(si)
            return 0.0

        ref = spec.get("registrationRef") or {}
        try:
            reg = self.store.get(
                "MachineRegistration", ref.get("namespace") or namespace, ref.get("name", "")
            )
        except NotFound:
            set_condition(
                si,
                "Ready",
                "False",
                "RegistrationNotFound",
                f"MachineRegistration {ref.get('name')} not found",
            )
            return self._save(si, before, 30.0)
        if not any(
            r.get("uid") == reg["metadata"]["uid"] for r in si["metadata"].get("ownerReferences") or []
        ):
            si["metadata"]["ownerReferences"] = [owner_ref(reg, controller=True)]
            status_copy = si.get("status")
            si = self.store.update(si)
            si["status"] = status_copy
        if not condition_true(reg, "Ready"):
            set_condition(
                si, "Ready", "False", "ResourcesNotCreatedYet", "waiting for the registration to be Ready"
            )
            set_condition(si, "SeedImageReady", "False", "SeedImageBuildNotStarted", "")
            return self._save(si, before, 5.0)
        set_condition(si, "Ready", "True", "ResourcesSuccessfullyCreated", "")

        registration = yaml.safe_dump(client_registration_file(reg, self.ctx), sort_keys=False)
        cloud_config = marshal_cloud_config(spec.get("cloud-config"))
        itype = spec.get("type") or "iso"
        base = (spec.get("baseImage") or "").strip() or self.default_base
        digest = hashlib.sha256(
            json.dumps(
                [registration, cloud_config, base, _layout_stamp(base), itype, self.command], sort_keys=True
            ).encode()
        ).hexdigest()[:24]
        filename = f"{reg['metadata']['name']}.{itype}"
        if not valid_artifact_ref(f"{digest}/{filename}"):
            set_condition(
                si, "SeedImageReady", "False", "SeedImageBuildFailure", f"invalid artifact name {filename!r}"
            )
            status["state"] = "Failed"
            return self._save(si, before, None)
        outdir = self.cache / digest
        artifact = outdir / filename

        cond = get_condition(si, "SeedImageReady") or {}
        if cond.get("reason") == "SeedImageBuildDeadline" and status.get("downloadToken") is None:
            return self._save(si, before, None)  # expired; retriggerBuild starts over
        annotations = si["metadata"].get("annotations") or {}
        if artifact.exists():
            if annotations.get(SEEDIMAGE_ARTIFACT_ANNOTATION) != (artifact_ref := f"{digest}/{filename}"):
                si["metadata"].setdefault("annotations", {})[SEEDIMAGE_ARTIFACT_ANNOTATION] = artifact_ref
                status_copy = si.get("status")
                si = self.store.update(si)
                si["status"] = status_copy
                status = si["status"]
            if not status.get("downloadToken") or cond.get("reason") != "SeedImageBuildSuccess":
                token = random_token(32)
                url = f"{self.ctx.public_url.rstrip('/')}/elemental/seedimage/{token}/{filename}"
                status.update(
                    downloadToken=token, downloadURL=url, checksumURL=url + ".sha256", state="Completed"
                )
                set_condition(
                    si, "SeedImageReady", "True", "SeedImageBuildSuccess", f"seed image {itype} available"
                )
            minutes = spec.get("cleanupAfterMinutes", 60)
            ready_at = (
                parse_time((get_condition(si, "SeedImageReady") or {}).get("lastTransitionTime"))
                or time.time()
            )
            if minutes and time.time() >= ready_at + minutes * 60:
                self._expire(si, artifact)
                return self._save(si, before, None)
            return self._save(si, before, (ready_at + minutes * 60 - time.time()) if minutes else None)

        proc = self.builds.get(key)
        if proc is None and self.failed.get(key) == digest:
            return self._save(si, before, None)  # failed with these inputs; retriggerBuild retries
        if proc is None:
            if digest in self.running.values():
                set_condition(
                    si, "SeedImageReady", "False", "SeedImageBuildOngoing", "waiting for an identical build"
                )
                return self._save(si, before, 2.0)
            try:
                self.builds[key] = self._start(outdir, artifact, registration, cloud_config, base, itype)
            except Die as e:
                set_condition(si, "SeedImageReady", "False", "SeedImageBuildFailure", e.message)
                status["state"] = "Failed"
                self.failed[key] = digest
                return self._save(si, before, None)
            self.running[key] = digest
            status.update(state="Started")
            status.pop("downloadToken", None)
            status.pop("downloadURL", None)
            status.pop("checksumURL", None)
            set_condition(
                si,
                "SeedImageReady",
                "False",
                "SeedImageBuildOngoing",
                f"seed image build started from {base}",
            )
            return self._save(si, before, 2.0)
        work = outdir.with_name(outdir.name + ".work")
        rc = proc.poll()
        if rc is None:
            step = _read(work / "progress").strip()
            if step:
                set_condition(si, "SeedImageReady", "False", "SeedImageBuildOngoing", step)
            return self._save(si, before, 2.0)
        del self.builds[key]
        self.running.pop(key, None)
        produced = work / "output" / filename
        if rc != 0 or not produced.exists():
            set_condition(
                si,
                "SeedImageReady",
                "False",
                "SeedImageBuildFailure",
                _failure(rc, _read(work / "build.log")),
            )
            status["state"] = "Failed"
            self.failed[key] = digest
            return self._save(si, before, None)
        outdir.mkdir(parents=True, exist_ok=True)
        checksum = _read(produced.with_name(filename + ".sha256")).split()
        if not checksum:  # a custom command wrote only the artifact
            sha = hashlib.sha256()
            with produced.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    sha.update(chunk)
            checksum = [sha.hexdigest()]
        (outdir / (filename + ".sha256")).write_text(f"{checksum[0]}  {filename}\n")
        os.replace(produced, artifact)  # rename last: the artifact's existence means "complete"
        shutil.rmtree(work, ignore_errors=True)
        return 0.0

    def _start(
        self, outdir: Path, artifact: Path, registration: str, cloud_config: str, base: str, itype: str
    ) -> subprocess.Popen[bytes]:
        work = outdir.with_name(outdir.name + ".work")
        shutil.rmtree(work, ignore_errors=True)
        (work / "output").mkdir(parents=True)
        (work / "registration.yaml").write_text(registration)
        (work / "cloud-config.yaml").write_text(cloud_config)
        argv = [
            part.format(
                python=sys.executable,
                registration=work / "registration.yaml",
                cloud_config=work / "cloud-config.yaml",
                output=work / "output" / artifact.name,
                workdir=work,
                base_image=base,
                type=itype,
                cache=self.bases,
                progress=work / "progress",
            )
            for part in shlex.split(self.command)
        ]
        log.info("seed image build: %s", shlex.join(argv))
        logf = (work / "build.log").open("wb")
        try:
            return spawn(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            logf.close()

    def _sweep(self) -> None:
        """Remove build directories no SeedImage points at any more (deleted SeedImages): the
        artifacts of others and running builds stay."""
        if not self.cache.is_dir():
            return
        keep = set(self.running.values())
        for s in self.store.list(self.kind):
            ref = (s["metadata"].get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION) or ""
            keep.add(ref.partition("/")[0])
        for d in self.cache.iterdir():
            name = d.name.removesuffix(".work")
            # young: a build that has just finished is annotated on its next reconcile
            young = time.time() - d.stat().st_mtime < 120
            if re.fullmatch(r"[0-9a-f]{24}", name) and name not in keep and not young:
                log.info("seed image build directory %s: no SeedImage uses it, removed", d)
                shutil.rmtree(d, ignore_errors=True)

    def _expire(self, si: Resource, artifact: Path) -> None:
        status = si["status"]
        for key in ("downloadToken", "downloadURL", "checksumURL"):
            status.pop(key, None)
        set_condition(
            si,
            "SeedImageReady",
            "True",
            "SeedImageBuildDeadline",
            "artifact removed after cleanupAfterMinutes",
        )
        others = [
            s
            for s in self.store.list(self.kind)
            if s["metadata"]["uid"] != si["metadata"]["uid"]
            and (s["metadata"].get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION)
            == (si["metadata"].get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION)
            and (s.get("status") or {}).get("downloadToken")
        ]
        if not others:
            shutil.rmtree(artifact.parent, ignore_errors=True)

    def _save(self, si: Resource, before: str, delay: float | None) -> float | None:
        if json.dumps(si.get("status"), sort_keys=True) != before:
            self.store.update_status(si)
        return delay
