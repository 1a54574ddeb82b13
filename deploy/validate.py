"""Offline checks of rendered manifests: what `kubectl apply` and KEDA would refuse, and what
they would accept but Keel would not run with.

    python -m deploy.validate rendered/keel.yaml rendered/secret.example.yaml

- Kubernetes objects against the JSON schemas `kubernetes-validate` bundles, strict (an
  unknown field is an error, as with `kubectl apply`'s server-side strict field validation),
  for Kubernetes KUBERNETES_VERSION;
- KEDA objects against the OpenAPI schemas of KEDA's own CRDs (deploy/keda.py fetches
  them), made strict the same way, and each `temporal` trigger's metadata and auth
  parameters against the keys KEDA's Temporal scaler reads (from its source);
- across objects: every env var is a Keel setting and the ConfigMap's values parse as Keel's
  settings; every Secret/ConfigMap reference names a key that exists; every ScaledObject
  scales a rendered Deployment; every Deployment serves metrics on the port it exposes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from deploy import keda
from keel.settings import _ENV, SettingsError, settings_from_env

KUBERNETES_VERSION = "1.33.0"
KEDA_KINDS = {
    "ScaledObject": "scaled_objects_crd",
    "TriggerAuthentication": "trigger_authentications_crd",
}
QUEUE_TYPES = {"workflow", "activity", "nexus"}  # the Temporal scaler's queueTypes


class ManifestError(ValueError):
    """An object that would be refused or would not work; names the object and the field."""


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [
        doc
        for path in paths
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


# --- Kubernetes --------------------------------------------------------------------------------


def check_kubernetes(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "(top level)"
        raise ManifestError(f"{_name(obj)}: {path}: {err.message}") from None
    except kubernetes_validate.SchemaNotFoundError as err:
        raise ManifestError(f"{_name(obj)}: {err.message}") from None


# --- KEDA --------------------------------------------------------------------------------------


def strict_openapi(schema: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as a JSON schema that refuses unknown fields: the
    API server prunes (or, with strict field validation, refuses) fields a structural schema
    does not declare, where plain JSON-schema validation would let them through."""
    if isinstance(schema, list):
        return [strict_openapi(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_openapi(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd_schema(path: Path, version: str = "v1alpha1") -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = strict_openapi(served["schema"]["openAPIV3Schema"])
            # ObjectMeta is `type: object` in a CRD; the API server checks it as ObjectMeta.
            schema["properties"]["metadata"] = {"$ref": "#/$defs/meta"}
            schema["$defs"] = {"meta": _object_meta_schema()}
            schema["required"] = sorted({"apiVersion", "kind", "metadata", "spec"})
            return schema
    raise ManifestError(f"{path}: no {version} in the CRD")


def _object_meta_schema() -> dict[str, Any]:
    """ObjectMeta's name, namespace, labels and annotations, which is all the renderer sets."""
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": strings,
            "annotations": strings,
        },
        "required": ["name"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class ScalerKeys:
    """What KEDA's Temporal scaler reads: its metadata keys (Go type of each), the required
    ones, the deprecated ones, and its auth parameters."""

    metadata: dict[str, str]
    required: set[str]
    deprecated: set[str]
    auth: set[str]


_TAG = re.compile(r'^\s*\w+\s+(\S+)\s+`keda:"name=(\w+),\s*order=([\w;]+)(.*)"`', re.M)


@cache
def scaler_keys(source: Path) -> ScalerKeys:
    metadata: dict[str, str] = {}
    required, deprecated, auth = set(), set(), set()
    for go_type, name, order, rest in _TAG.findall(source.read_text(encoding="utf-8")):
        if "authParams" in order:
            auth.add(name)
            continue
        metadata[name] = go_type
        if "resolvedEnv" in order:  # KEDA also reads <name>FromEnv
            metadata[name + "FromEnv"] = "string"
        if "optional" not in rest and "default=" not in rest:
            required.add(name)
        if "deprecated=" in rest:
            deprecated.add(name)
    if "taskQueue" not in metadata or "apiKey" not in auth:
        raise ManifestError(f"{source}: could not read the Temporal scaler's keys")
    return ScalerKeys(metadata, required, deprecated, auth)


def check_keda(obj: dict[str, Any], files: keda.KedaFiles) -> None:
    crd = getattr(files, KEDA_KINDS[obj["kind"]])
    try:
        jsonschema.Draft202012Validator(_crd_schema(crd)).validate(obj)
    except jsonschema.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "(top level)"
        raise ManifestError(f"{_name(obj)}: {path}: {err.message}") from None
    keys = scaler_keys(files.temporal_scaler_go)
    if obj["kind"] == "TriggerAuthentication":
        for ref in obj["spec"].get("secretTargetRef", []):
            if ref["parameter"] not in keys.auth:
                raise ManifestError(
                    f"{_name(obj)}: parameter {ref['parameter']!r} is not one the Temporal "
                    f"scaler reads ({', '.join(sorted(keys.auth))})"
                )
        return
    spec = obj["spec"]
    # the CRD's CEL rule (x-kubernetes-validations), which JSON schema cannot express
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        raise ManifestError(f"{_name(obj)}: minReplicaCount > maxReplicaCount")
    for trigger in spec["triggers"]:
        if trigger["type"] == "temporal":
            _check_temporal_trigger(_name(obj), trigger["metadata"], keys)


def _check_temporal_trigger(where: str, metadata: dict[str, str], keys: ScalerKeys) -> None:
    for key, value in metadata.items():
        if key not in keys.metadata:
            raise ManifestError(f"{where}: temporal trigger: unknown metadata key {key!r}")
        if key in keys.deprecated:
            raise ManifestError(f"{where}: temporal trigger: {key!r} is deprecated in KEDA")
        go_type = keys.metadata[key]
        if go_type in ("int", "int64") and not re.fullmatch(r"\d+", value):
            raise ManifestError(f"{where}: temporal trigger: {key}={value!r} is not a count")
        if go_type == "bool" and value not in ("true", "false"):
            raise ManifestError(f"{where}: temporal trigger: {key}={value!r} is not a bool")
    for key in keys.required:
        if key not in metadata and key + "FromEnv" not in metadata:
            raise ManifestError(f"{where}: temporal trigger: {key!r} is required")
    types = set(metadata.get("queueTypes", "workflow").split(","))
    if not types <= QUEUE_TYPES:
        raise ManifestError(f"{where}: temporal trigger: queueTypes {sorted(types - QUEUE_TYPES)}")


# --- across objects ----------------------------------------------------------------------------


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _data_keys(obj: dict[str, Any]) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def check_references(objects: list[dict[str, Any]]) -> None:
    """What schemas cannot see. Secrets the manifests name but do not hold (the mTLS
    certificate, an existing payload claim) are the operator's to create: a reference to an
    absent object is allowed, one to an absent key of a present object is not."""
    secrets, configmaps = _by_kind(objects, "Secret"), _by_kind(objects, "ConfigMap")
    deployments = _by_kind(objects, "Deployment")
    for deployment in deployments.values():
        where = _name(deployment)
        pod = deployment["spec"]["template"]
        for container in pod["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                name = source["configMapRef"]["name"]
                if name not in configmaps:
                    raise ManifestError(f"{where}: envFrom ConfigMap {name!r} is not rendered")
                env |= configmaps[name].get("data", {})
            for var in container.get("env", []):
                env[var["name"]] = var.get("value", "")
                for ref_kind, store in (("secretKeyRef", secrets), ("configMapKeyRef", configmaps)):
                    ref = var.get("valueFrom", {}).get(ref_kind)
                    if ref:
                        _check_key(f"{where}: {var['name']}: {ref_kind}", ref, store)
            unknown = sorted(set(env) - set(_ENV))
            if unknown:
                raise ManifestError(f"{where}: not Keel settings: {', '.join(unknown)}")
            try:  # the literal values as Keel would read them (secrets are not literal here)
                settings = settings_from_env({k: v for k, v in env.items() if v})
            except SettingsError as err:
                raise ManifestError(f"{where}: {err}") from None
            _check_metrics(deployment, container, settings.metrics_address, objects)
    for scaled in _by_kind(objects, "ScaledObject").values():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            raise ManifestError(f"{_name(scaled)}: scales {target!r}, which is not rendered")
        for trigger in scaled["spec"]["triggers"]:
            auth = trigger.get("authenticationRef", {}).get("name")
            if auth and auth not in _by_kind(objects, "TriggerAuthentication"):
                raise ManifestError(f"{_name(scaled)}: TriggerAuthentication {auth!r} missing")
    for auth_obj in _by_kind(objects, "TriggerAuthentication").values():
        for ref in auth_obj["spec"].get("secretTargetRef", []):
            _check_key(f"{_name(auth_obj)}: {ref['parameter']}", ref, secrets)


def _check_key(where: str, ref: dict[str, Any], store: dict[str, dict[str, Any]]) -> None:
    """A key of a Secret or ConfigMap that is among the objects must exist in it."""
    if ref["name"] in store and ref["key"] not in _data_keys(store[ref["name"]]):
        raise ManifestError(f"{where}: {ref['name']}/{ref['key']}: no such key")


def _check_metrics(
    deployment: dict[str, Any],
    container: dict[str, Any],
    address: str | None,
    objects: list[dict[str, Any]],
) -> None:
    where = _name(deployment)
    if not address:
        raise ManifestError(f"{where}: KEEL_METRICS_ADDRESS is not set")
    port = int(address.rpartition(":")[2])
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if ports.get("metrics") != port:
        raise ManifestError(f"{where}: serves metrics on {port}, exposes {ports}")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    scraped = annotations.get("prometheus.io/port") == str(port)
    served = any(
        s["spec"].get("selector")
        and s["spec"]["selector"].items() <= labels.items()
        and any(p.get("targetPort") in ("metrics", port) for p in s["spec"]["ports"])
        for s in _by_kind(objects, "Service").values()
    )
    if not (scraped and served):
        raise ManifestError(f"{where}: metrics port {port} has no scrape annotation or Service")


# --- all of it ---------------------------------------------------------------------------------


def check_all(objects: list[dict[str, Any]], files: keda.KedaFiles) -> int:
    """Every check on every object; returns how many objects were checked."""
    for obj in objects:
        if obj.get("kind") in KEDA_KINDS:
            check_keda(obj, files)
        else:
            check_kubernetes(obj)
    check_references(objects)
    return len(objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.validate", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="rendered YAML files")
    args = parser.parse_args(argv)
    try:
        count = check_all(load(args.files), keda.fetch())
    except (ManifestError, keda.KedaDownloadError, OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{count} objects valid (Kubernetes {KUBERNETES_VERSION} strict schemas, "
        f"KEDA {keda.VERSION} CRDs and Temporal scaler keys, cross-references)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
