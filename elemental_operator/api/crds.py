"""CRD YAML and a Helm chart generated from the same schemas the operator validates with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from elemental_operator.api.schema import GROUP, VERSION, KindInfo, kinds

CRD_LABELS = {
    "cluster.x-k8s.io/provider": "infrastructure-elemental",
    "cluster.x-k8s.io/v1beta1": VERSION,
}


def crd(info: KindInfo) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": info.schema},
    }
    if info.has_status:
        version["subresources"] = {"status": {}}
    if info.printer_columns:
        version["additionalPrinterColumns"] = info.printer_columns
    names: dict[str, Any] = {
        "kind": info.kind,
        "listKind": info.kind + "List",
        "plural": info.plural,
        "singular": info.singular,
    }
    short = [s for s in info.short_names if s not in (info.plural, info.singular) and len(s) <= 5]
    if short:
        names["shortNames"] = short
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}", "labels": dict(CRD_LABELS)},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "versions": [version],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(info) for info in kinds().values() if not info.core]


def crds_yaml() -> str:
    return yaml.safe_dump_all(all_crds(), sort_keys=False, explicit_start=True)


_CHART = """\
apiVersion: v2
name: elemental-operator-py
description: Python reimplementation of the Elemental operator (CRDs, registration, plans, admin API)
type: application
version: {version}
appVersion: "{version}"
"""

_VALUES = """\
image:
  repository: elemental-operator
  tag: "{tag}"
  pullPolicy: IfNotPresent
# Several replicas need a shared PostgreSQL database; SQLite (the default) means one replica.
replicaCount: 1
databaseUrl: ""
# What machines use to reach the operator (registration URLs embed it).
publicUrl: "https://elemental-operator.example:8443"
service:
  type: NodePort
  port: 8443
persistence:
  size: 10Gi
  storageClass: ""
"""

_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/name: elemental-operator-py
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels:
      app.kubernetes.io/name: elemental-operator-py
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: elemental-operator-py
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
        - name: operator
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args: ["serve"]
          env:
            - name: ELEMENTAL_OPERATOR_STATE_DIR
              value: /var/lib/elemental-py
            - name: ELEMENTAL_OPERATOR_PUBLIC_URL
              value: {{ .Values.publicUrl | quote }}
            {{- if .Values.databaseUrl }}
            - name: ELEMENTAL_OPERATOR_DATABASE_URL
              value: {{ .Values.databaseUrl | quote }}
            {{- end }}
          ports:
            - name: https
              containerPort: 8443
          readinessProbe:
            httpGet:
              path: /healthz
              port: https
              scheme: HTTPS
          volumeMounts:
            - name: state
              mountPath: /var/lib/elemental-py
      volumes:
        - name: state
          {{- if .Values.databaseUrl }}
          emptyDir: {}
          {{- else }}
          persistentVolumeClaim:
            claimName: {{ .Release.Name }}-state
          {{- end }}
"""

_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  type: {{ .Values.service.type }}
  selector:
    app.kubernetes.io/name: elemental-operator-py
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
    - name: https
      port: {{ .Values.service.port }}
      targetPort: https
"""

_PVC = """\
{{- if not .Values.databaseUrl }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ .Release.Name }}-state
spec:
  accessModes: ["ReadWriteOnce"]
  {{- if .Values.persistence.storageClass }}
  storageClassName: {{ .Values.persistence.storageClass }}
  {{- end }}
  resources:
    requests:
      storage: {{ .Values.persistence.size }}
{{- end }}
"""


def write_chart(directory: Path, image: str = "elemental-operator:latest", version: str = "0.1.0") -> None:
    """Helm 3 layout: CRDs under crds/ (installed before templates, never templated)."""
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "crds").mkdir(exist_ok=True)
    (directory / "templates").mkdir(exist_ok=True)
    (directory / "Chart.yaml").write_text(_CHART.format(version=version))
    (directory / "values.yaml").write_text(
        _VALUES.format(tag=tag).replace("elemental-operator\n", repo + "\n", 1)
    )
    for c in all_crds():
        (directory / "crds" / f"{c['metadata']['name']}.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
    (directory / "templates" / "deployment.yaml").write_text(_DEPLOYMENT)
    (directory / "templates" / "service.yaml").write_text(_SERVICE)
    (directory / "templates" / "pvc.yaml").write_text(_PVC)
