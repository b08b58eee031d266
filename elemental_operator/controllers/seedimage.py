"""SeedImage: build a seed ISO with the registration embedded, serve it, clean it up (§1.7, §5.3).

Elemental builds in a pod; we run the ISO tooling as a subprocess. The default command
is ``python -m iso.pack`` over a work directory that links the base image's files (the
mkosi outputs: ``spec.baseImage`` if it is a local directory, else ``$OUT`` or ``./out``)
and leaves ``seed.iso`` there. A custom command (``--seedimage-command``) may use the
placeholders {registration} {cloud_config} {output} {workdir} {base_image} {type} and must
write {output}.

Artifacts are cached by a hash of every input (registration file, cloud-config, base image,
type, command), so an identical SeedImage reuses the file and any edit (Elemental #456)
produces a new one. The file lives at ``<state>/seedimages/<hash>/<file>``; the server finds
it through the annotation ``elemental.cattle.io/seedimage-artifact: <hash>/<file>``.
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
    "{python} -m iso.pack --registration {registration} --cloud-config {cloud_config} "
    "--out {workdir} --work {workdir}/work"
)
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


class SeedImageController(Controller):
    kind = "SeedImage"
    watches = ("MachineRegistration",)
    resync = 300.0

    def __init__(
        self, ctx: OperatorContext, state_dir: Path, command: str | None = None, base_dir: Path | None = None
    ) -> None:
        super().__init__(ctx)
        self.cache = Path(state_dir) / "seedimages"
        self.command = command or DEFAULT_COMMAND
        self.base_dir = base_dir or Path(os.environ.get("OUT") or "out")
        self.builds: dict[str, subprocess.Popen[bytes]] = {}
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
        base = spec.get("baseImage") or ""
        digest = hashlib.sha256(
            json.dumps([registration, cloud_config, base, itype, self.command], sort_keys=True).encode()
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
                set_condition(si, "SeedImageReady", "True", "SeedImageBuildSuccess", "")
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
            if itype != "iso" and self.command == DEFAULT_COMMAND:
                set_condition(
                    si,
                    "SeedImageReady",
                    "False",
                    "SeedImageBuildFailure",
                    "raw seed images need a custom --seedimage-command",
                )
                status["state"] = "Failed"
                return self._save(si, before, None)
            self.builds[key] = self._start(outdir, artifact, registration, cloud_config, base, itype)
            status.update(state="Started")
            status.pop("downloadToken", None)
            status.pop("downloadURL", None)
            status.pop("checksumURL", None)
            set_condition(si, "SeedImageReady", "False", "SeedImageBuildOngoing", "building")
            return self._save(si, before, 2.0)
        rc = proc.poll()
        if rc is None:
            return self._save(si, before, 2.0)
        del self.builds[key]
        work = outdir.with_name(outdir.name + ".work")
        produced = work / "output" / filename
        if rc == 0 and not produced.exists() and (work / "seed.iso").exists():
            produced = work / "seed.iso"
        if rc != 0 or not produced.exists():
            tail = (
                (work / "build.log").read_text(errors="replace")[-1500:]
                if (work / "build.log").exists()
                else ""
            )
            set_condition(
                si, "SeedImageReady", "False", "SeedImageBuildFailure", f"build exited {rc}: {tail}"
            )
            status["state"] = "Failed"
            self.failed[key] = digest
            return self._save(si, before, None)
        outdir.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        with produced.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        (outdir / (filename + ".sha256")).write_text(f"{sha.hexdigest()}  {filename}\n")
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
        base_dir = Path(base) if base and Path(base).is_dir() else self.base_dir
        if base_dir.is_dir():
            for entry in base_dir.iterdir():
                if entry.name not in ("seed.iso", "pxe", "work") and not (work / entry.name).exists():
                    (work / entry.name).symlink_to(entry.resolve())
        argv = [
            part.format(
                python=sys.executable,
                registration=work / "registration.yaml",
                cloud_config=work / "cloud-config.yaml",
                output=work / "output" / artifact.name,
                workdir=work,
                base_image=base,
                type=itype,
            )
            for part in shlex.split(self.command)
        ]
        log.info("seed image build: %s", shlex.join(argv))
        logf = (work / "build.log").open("wb")
        try:
            return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            logf.close()

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
