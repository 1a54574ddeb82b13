"""Render Keel's Kubernetes manifests from a values file: plain YAML for `kubectl apply -f`.

    python -m deploy.render -f my-values.yaml -o rendered/

writes `rendered/keel.yaml` (everything to apply) and `rendered/secret.example.yaml` (the
Secret's keys with placeholder values: fill it in, or create the Secret another way; it is
kept apart so that applying the manifests never overwrites real keys with placeholders).

No Helm or kustomize: the values are one YAML file (`deploy/values.example.yaml` documents
every key), merged over DEFAULTS below; an unknown key is an error, so a typo cannot silently
fall back to a default. Queue names, settings, secret names and the workers' pools are
imported from Keel itself, so the manifests follow the code.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from keel._lifeline import SHUTDOWN_GRACE_S
from keel._queues import SANDBOX, Queues
from keel.settings import _ENV, SECRET_SETTINGS, Settings
from workers import NAMES as POOLS

EXAMPLE_VALUES = Path(__file__).resolve().parent / "values.example.yaml"
VAR_OF = {field: var for var, field in _ENV.items()}

# Where things live inside every Keel container.
HOME_DIR = "/var/lib/keel"  # KEEL_HOME: per-pod scratch (logs, Triton's backend dir, workspaces)
PAYLOAD_DIR = "/var/lib/keel-payloads"  # KEEL_PAYLOAD_DIR: shared by every pod (a RWX volume)
TLS_DIR = "/etc/keel/temporal-tls"  # the mTLS client certificate, key and CA (a Secret)
SANDBOX_LOCKS = "/run/keel-sandbox"  # sandbox/bwrap.py UID_LOCKS: one lock file per uid in use
NON_ROOT_UID = 10001

# Settings the renderer sets itself, per pod or from a dedicated value: `config` may not set
# them (two sources for one variable is how deployments drift).
MANAGED = {
    "KEEL_HOME",
    "KEEL_PAYLOAD_DIR",
    "KEEL_METRICS_ADDRESS",
    "KEEL_TEMPORAL_ADDRESS",
    "KEEL_TEMPORAL_NAMESPACE",
    "KEEL_TEMPORAL_TLS",
    "KEEL_TEMPORAL_TLS_CERT",
    "KEEL_TEMPORAL_TLS_KEY",
    "KEEL_TEMPORAL_TLS_CA",
    "KEEL_TEMPORAL_UI_URL",
    "KEEL_QUEUE_PREFIX",
    "KEEL_SANDBOX_THREADS",
    "KEEL_MEMORY_THREADS",
    "KEEL_WORKER_DRAIN_S",
    "KEEL_PLANNER_MODEL",
    "KEEL_REASONER_MODEL",
    "KEEL_ESCALATION_MODEL",
    "KEEL_MEMORY_MODEL",
    "KEEL_EMBEDDING_MODEL",
    "KEEL_QDRANT_URL",
    "KEEL_NEO4J_URL",
    "KEEL_NEO4J_USER",
    "KEEL_NEO4J_DATABASE",
    "KEEL_LOG_LEVEL",
    "KEEL_DEV_PORT",  # the embedded dev server: never in a cluster
    "KEEL_CREDENTIAL",  # a caller's credential, not a worker's
}

# The Secret's keys: every setting Keel treats as secret that a worker reads (a caller's
# KEEL_CREDENTIAL is not one), plus KEEL_SQL_URL, whose URL holds the database password.
SECRET_KEYS = [VAR_OF[f] for f in SECRET_SETTINGS if f != "credential"] + ["KEEL_SQL_URL"]

# Free-form values (their contents are not checked against DEFAULTS).
FREE_FORM = {"config", "nodeSelector", "tolerations"}


def _pool(
    cpu: str, memory: str, cpu_limit: str, memory_limit: str, max_replicas: int, drain_s: int
) -> dict:
    return {
        "minReplicas": 1,
        "maxReplicas": max_replicas,
        "targetQueueSize": 10,
        "activationQueueSize": 0,
        "cpu": cpu,
        "memory": memory,
        "cpuLimit": cpu_limit,
        "memoryLimit": memory_limit,
        "drainS": drain_s,
    }


DEFAULTS: dict[str, Any] = {
    "namespace": "keel",
    "createNamespace": True,
    "image": "registry.example.com/keel:0.1.0",
    "imagePullPolicy": "IfNotPresent",
    "secretName": "keel-secrets",
    "queuePrefix": "",
    "metricsPort": 9464,
    "logLevel": "INFO",
    "temporal": {
        "address": "temporal-frontend.temporal.svc.cluster.local:7233",
        "namespace": "default",
        "auth": "none",
        "tlsSecret": "keel-temporal-tls",
        "uiUrl": "",
    },
    "models": {
        "planner": "triton",
        "reasoner": "openai:gpt-4o-mini",
        "escalation": "",
        "memory": "",
        "embedding": "minilm",
    },
    "qdrant": {"url": "http://qdrant.qdrant.svc.cluster.local:6333"},
    "neo4j": {
        "url": "bolt://neo4j.neo4j.svc.cluster.local:7687",
        "user": "neo4j",
        "database": "neo4j",
    },
    "payloads": {"existingClaim": "", "storageClassName": "", "size": "20Gi"},
    "config": {},
    "scaling": {"pollingInterval": 15, "cooldownPeriod": 300, "scaleDownStabilizationS": 300},
    "pools": {
        "agent": _pool("250m", "512Mi", "1", "1Gi", 10, 10) | {"targetQueueSize": 20},
        "planner": _pool("2", "6Gi", "4", "8Gi", 4, 60)
        | {
            "targetQueueSize": 4,
            "gpus": 1,
            "nodeSelector": {},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        "llm": _pool("250m", "512Mi", "1", "1Gi", 10, 60) | {"targetQueueSize": 32},
        "tools": _pool("1", "2Gi", "4", "auto", 10, 30)
        | {"sandboxThreads": 16, "podUserNamespace": True},
        "memory": _pool("500m", "1Gi", "2", "2Gi", 6, 15) | {"memoryThreads": 8},
    },
}
assert tuple(DEFAULTS["pools"]) == POOLS


class ValuesError(ValueError):
    """The values file asks for something the renderer cannot render; says what to fix."""


# --- values --------------------------------------------------------------------------------


def merge(defaults: dict[str, Any], given: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`given` over `defaults`, refusing keys DEFAULTS does not know (a typo is an error)."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        path = f"{where}{key}"
        if key not in defaults:
            known = ", ".join(defaults)
            raise ValuesError(f"unknown value {path!r}; known here: {known}")
        if key in FREE_FORM or not isinstance(defaults[key], dict):
            out[key] = value
        elif not isinstance(value, dict):
            raise ValuesError(f"{path} must be a mapping")
        else:
            out[key] = merge(defaults[key], value, path + ".")
    return out


def load_values(path: Path | None) -> dict[str, Any]:
    given = yaml.safe_load(path.read_text(encoding="utf-8")) if path else {}
    if not isinstance(given or {}, dict):
        raise ValuesError(f"{path}: the values must be a YAML mapping")
    return merge(DEFAULTS, given or {})


# --- the pools and their queues --------------------------------------------------------------


@dataclass(frozen=True)
class QueueScaling:
    queue: str
    queue_types: str  # KEDA's queueTypes: which of the queue's task types count as backlog


def pool_queues(pool: str, prefix: str) -> list[QueueScaling]:
    """The task queues whose backlog scales a pool (workers/<pool>.py polls them). The tools
    pool's per-API queues (`keel-http-<api>`) are left out: the server rate-limits each API
    across all replicas, so more replicas would not drain them faster."""
    q = Queues(prefix)
    return {
        # the orchestrator runs workflow tasks and one light activity (notify_human)
        "agent": [QueueScaling(q.agent, "workflow,activity")],
        "planner": [QueueScaling(q.planner, "activity")],
        "llm": [QueueScaling(q.llm, "activity")],
        "tools": [QueueScaling(q.tools, "activity"), QueueScaling(q.name(SANDBOX), "activity")],
        "memory": [QueueScaling(q.memory, "activity")],
    }[pool]


# --- rendering -------------------------------------------------------------------------------


@dataclass
class Rendered:
    objects: list[dict[str, Any]]  # what `kubectl apply -f keel.yaml` creates
    secret_example: dict[str, Any]  # the Secret's keys, placeholder values


def _labels(component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "keel", "app.kubernetes.io/part-of": "keel"}
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def _meta(name: str, values: dict[str, Any], component: str | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": values["namespace"], "labels": _labels(component)}


def config_data(values: dict[str, Any]) -> dict[str, str]:
    """The ConfigMap: the settings every pool shares (the planner and the tools worker must
    see the same tool settings, README "How a task runs")."""
    t, m = values["temporal"], values["models"]
    data = {
        "KEEL_TEMPORAL_ADDRESS": t["address"],
        "KEEL_TEMPORAL_NAMESPACE": t["namespace"],
        "KEEL_PLANNER_MODEL": m["planner"],
        "KEEL_REASONER_MODEL": m["reasoner"],
        "KEEL_EMBEDDING_MODEL": m["embedding"],
        "KEEL_LOG_LEVEL": values["logLevel"],
    }
    optional = {
        "KEEL_QUEUE_PREFIX": values["queuePrefix"],
        "KEEL_TEMPORAL_UI_URL": t["uiUrl"],
        "KEEL_ESCALATION_MODEL": m["escalation"],
        "KEEL_MEMORY_MODEL": m["memory"],
        "KEEL_QDRANT_URL": values["qdrant"]["url"],
    }
    if values["neo4j"]["url"]:
        optional |= {
            "KEEL_NEO4J_URL": values["neo4j"]["url"],
            "KEEL_NEO4J_USER": values["neo4j"]["user"],
            "KEEL_NEO4J_DATABASE": values["neo4j"]["database"],
        }
    if t["auth"] != "none":  # an API key implies TLS in Keel already; say it for both
        optional["KEEL_TEMPORAL_TLS"] = "true"
    data |= {k: v for k, v in optional.items() if v}
    for var, value in values["config"].items():
        if var not in _ENV:
            raise ValuesError(f"config.{var}: not a Keel setting (see keel/settings.py)")
        if var in MANAGED:
            raise ValuesError(f"config.{var}: set by the renderer or a dedicated value")
        if var in SECRET_KEYS:
            raise ValuesError(f"config.{var}: a secret; put it in the Secret instead")
        data[var] = str(value)
    return data


def _tools_memory_limit(values: dict[str, Any], pool: dict[str, Any]) -> str:
    """The tools pod's memory limit, from the sandbox's own limits: every run may hold its
    address space plus its two tmpfs (workdir and /tmp, both counted as memory by the pod's
    cgroup), times the runs at once, plus 1 GiB for the worker itself."""
    fields = Settings.model_fields
    config = values["config"]
    memory_mb = int(config.get("KEEL_SANDBOX_MEMORY_MB", fields["sandbox_memory_mb"].default))
    disk_mb = int(config.get("KEEL_SANDBOX_DISK_MB", fields["sandbox_disk_mb"].default))
    total_mb = 1024 + pool["sandboxThreads"] * (memory_mb + 2 * disk_mb)
    return f"{math.ceil(total_mb / 1024)}Gi"


def _env(name: str, value: object) -> dict[str, str]:
    return {"name": name, "value": str(value)}


def _container(pool: str, values: dict[str, Any]) -> dict[str, Any]:
    spec = values["pools"][pool]
    port = values["metricsPort"]
    env: list[dict[str, Any]] = [
        _env("KEEL_HOME", HOME_DIR),
        _env("KEEL_PAYLOAD_DIR", PAYLOAD_DIR),
        # Prometheus metrics of this worker (the SDK's and Keel's, README "Metrics")
        _env("KEEL_METRICS_ADDRESS", f"0.0.0.0:{port}"),
        # a scale-down's SIGTERM: running calls finish (this long at most), not paid twice
        _env("KEEL_WORKER_DRAIN_S", spec["drainS"]),
    ]
    if pool == "tools":
        env.append(_env("KEEL_SANDBOX_THREADS", spec["sandboxThreads"]))
    if pool == "memory":
        env.append(_env("KEEL_MEMORY_THREADS", spec["memoryThreads"]))
    if values["temporal"]["auth"] == "mtls":
        env += [
            _env("KEEL_TEMPORAL_TLS_CERT", f"{TLS_DIR}/tls.crt"),
            _env("KEEL_TEMPORAL_TLS_KEY", f"{TLS_DIR}/tls.key"),
            _env("KEEL_TEMPORAL_TLS_CA", f"{TLS_DIR}/ca.crt"),
        ]
    for key in SECRET_KEYS:
        # Every pool gets every key: any pool may call a model (memory: OpenAI embeddings,
        # planner: escalation), and every worker checks identities and decrypts payloads.
        # Optional, so that a deployment leaves out what it does not use; the Temporal API
        # key is required where the cluster needs it.
        required = key == "KEEL_TEMPORAL_API_KEY" and values["temporal"]["auth"] == "apiKey"
        ref = {"name": values["secretName"], "key": key, "optional": not required}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})

    memory_limit = spec["memoryLimit"]
    if memory_limit == "auto":
        if pool != "tools":
            raise ValuesError(f"pools.{pool}.memoryLimit: 'auto' is for the tools pool only")
        memory_limit = _tools_memory_limit(values, spec)
    resources: dict[str, Any] = {
        "requests": {"cpu": spec["cpu"], "memory": spec["memory"]},
        "limits": {"cpu": spec["cpuLimit"], "memory": memory_limit},
    }
    mounts: list[dict[str, Any]] = [
        {"name": "home", "mountPath": HOME_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "payloads", "mountPath": PAYLOAD_DIR},
    ]
    if values["temporal"]["auth"] == "mtls":
        mounts.append({"name": "temporal-tls", "mountPath": TLS_DIR, "readOnly": True})
    if pool == "planner":
        if spec["gpus"]:
            # an extended resource: the request equals the limit
            resources["limits"]["nvidia.com/gpu"] = spec["gpus"]
        # Triton's Python backend talks to its model stubs through /dev/shm, which a
        # container caps at 64 MiB
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if pool == "tools":
        mounts.append({"name": "sandbox-locks", "mountPath": SANDBOX_LOCKS})

    return {
        "name": "worker",
        "image": values["image"],
        "imagePullPolicy": values["imagePullPolicy"],
        "command": ["keel", "worker", pool],
        "envFrom": [{"configMapRef": {"name": "keel-config"}}],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        # Keel has no health endpoint. /metrics is served by the SDK runtime the worker
        # creates before it connects, so it answers once the process is up; it says nothing
        # about polling, so it gates only readiness (the metrics Service), not liveness: a
        # worker that loses Temporal or crashes exits non-zero and the kubelet restarts it.
        "readinessProbe": {
            "httpGet": {"path": "/metrics", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": _tools_security(spec) if pool == "tools" else _restricted(),
        "volumeMounts": mounts,
    }


def _restricted() -> dict[str, Any]:
    """Pod Security Standard "restricted": nothing in these workers needs more."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _tools_security(spec: dict[str, Any]) -> dict[str, Any]:
    """What bubblewrap (sandbox/bwrap.py) needs to build its sandbox inside a container.

    - runAsUser 0 with only SETUID/SETGID: the worker starts each run as its own uid from
      KEEL_SANDBOX_UID (setpriv), because RLIMIT_NPROC does not bind root and one run's
      processes must not count against another's. Every other capability is dropped; bwrap
      itself drops all of them inside the sandbox.
    - seccomp Unconfined: bwrap calls unshare(CLONE_NEWUSER|...), mount and pivot_root to
      build the sandbox, and the container runtime's default profile refuses those to a
      process without CAP_SYS_ADMIN. The sandboxed code is not unconfined: bwrap loads
      Keel's own seccomp filter (sandbox/seccomp.py) around it.
    - AppArmor Unconfined: the runtime's default profile denies mount, which bwrap needs for
      its read-only root, /proc and tmpfs (on nodes without AppArmor the field is ignored).
    - procMount Unmasked (only with podUserNamespace): the runtime masks parts of /proc with
      overmounts, and the kernel refuses a fresh proc mount (bwrap --proc) in a new user
      namespace while such overmounts exist. Unmasked is allowed only in a pod with its own
      user namespace (hostUsers: false), where the pod's root is an unprivileged host uid.
    - no allowPrivilegeEscalation: setpriv and bwrap need no setuid binary (Debian's bwrap
      is not setuid; it relies on unprivileged user namespaces, which the node must allow:
      user.max_user_namespaces > 0, and on Ubuntu 23.10+
      kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap).
    """
    security: dict[str, Any] = {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]},
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
    }
    if spec["podUserNamespace"]:
        security["procMount"] = "Unmasked"
    return security


def _volumes(pool: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    claim = values["payloads"]["existingClaim"] or "keel-payloads"
    volumes: list[dict[str, Any]] = [
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "payloads", "persistentVolumeClaim": {"claimName": claim}},
    ]
    if values["temporal"]["auth"] == "mtls":
        secret = {"secretName": values["temporal"]["tlsSecret"], "defaultMode": 0o440}
        volumes.append({"name": "temporal-tls", "secret": secret})
    if pool == "planner":
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    if pool == "tools":
        volumes.append({"name": "sandbox-locks", "emptyDir": {"medium": "Memory"}})
    return volumes


def deployment(pool: str, values: dict[str, Any]) -> dict[str, Any]:
    spec = values["pools"][pool]
    port = values["metricsPort"]
    queues = pool_queues(pool, values["queuePrefix"])
    pod: dict[str, Any] = {
        "serviceAccountName": "keel",
        "automountServiceAccountToken": False,  # no worker talks to the Kubernetes API
        # SIGTERM: the worker stops polling and lets running activities finish for drainS,
        # ending itself SHUTDOWN_GRACE_S after that (keel/_lifeline.py); SIGKILL comes later.
        "terminationGracePeriodSeconds": math.ceil(spec["drainS"] + SHUTDOWN_GRACE_S) + 15,
        "securityContext": {"fsGroup": NON_ROOT_UID},  # the shared payload volume's group
        "containers": [_container(pool, values)],
        "volumes": _volumes(pool, values),
    }
    if pool == "tools" and spec["podUserNamespace"]:
        pod["hostUsers"] = False
    if pool == "planner":
        if spec["nodeSelector"]:
            pod["nodeSelector"] = spec["nodeSelector"]
        if spec["tolerations"]:
            pod["tolerations"] = spec["tolerations"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(f"keel-{pool}", values, pool)
        | {"annotations": {"keel/task-queues": ",".join(q.queue for q in queues)}},
        # No `replicas`: the ScaledObject's HPA owns it, and a replicas field here would
        # reset it on every `kubectl apply`. It starts at 1 and KEDA moves it within bounds.
        "spec": {
            "selector": {"matchLabels": _labels(pool)},
            "template": {
                "metadata": {
                    "labels": _labels(pool),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def metrics_service(pool: str, values: dict[str, Any]) -> dict[str, Any]:
    """Headless: one endpoint per ready pod, for a Prometheus Operator ServiceMonitor or any
    scraper that discovers endpoints (each pod's own numbers, never one pod's by chance)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(f"keel-{pool}-metrics", values, pool),
        "spec": {
            "clusterIP": "None",
            "selector": _labels(pool),
            "ports": [{"name": "metrics", "port": values["metricsPort"], "targetPort": "metrics"}],
        },
    }


def scaled_object(pool: str, values: dict[str, Any]) -> dict[str, Any]:
    spec, scaling, t = values["pools"][pool], values["scaling"], values["temporal"]
    if not 0 <= spec["minReplicas"] <= spec["maxReplicas"]:
        raise ValuesError(f"pools.{pool}: needs 0 <= minReplicas <= maxReplicas")
    triggers = []
    for q in pool_queues(pool, values["queuePrefix"]):
        trigger: dict[str, Any] = {
            "type": "temporal",
            "name": q.queue,
            "metadata": {
                "endpoint": t["address"],
                "namespace": t["namespace"],
                "taskQueue": q.queue,
                "queueTypes": q.queue_types,
                # desired replicas = backlog / targetQueueSize (tasks waiting, not running)
                "targetQueueSize": str(spec["targetQueueSize"]),
                # from zero replicas: scale up once more than this many wait
                "activationTargetQueueSize": str(spec["activationQueueSize"]),
            },
        }
        if t["auth"] != "none":
            trigger["authenticationRef"] = {"name": "keel-temporal"}
        triggers.append(trigger)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(f"keel-{pool}", values, pool),
        "spec": {
            "scaleTargetRef": {"name": f"keel-{pool}"},
            "pollingInterval": scaling["pollingInterval"],
            "cooldownPeriod": scaling["cooldownPeriod"],
            "minReplicaCount": spec["minReplicas"],
            "maxReplicaCount": spec["maxReplicas"],
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        # The backlog drops to 0 as soon as workers keep up (sync match),
                        # while they are still busy: wait before removing replicas.
                        "scaleDown": {
                            "stabilizationWindowSeconds": scaling["scaleDownStabilizationS"],
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        }
                    }
                }
            },
            "triggers": triggers,
        },
    }


def trigger_authentication(values: dict[str, Any]) -> dict[str, Any] | None:
    """How KEDA's Temporal scaler authenticates: Temporal Cloud's API key, or the mTLS client
    certificate (PEM contents from the TLS Secret: tls.crt, tls.key, ca.crt)."""
    auth = values["temporal"]["auth"]
    if auth == "none":
        return None
    if auth == "apiKey":
        refs = [
            {"parameter": "apiKey", "name": values["secretName"], "key": "KEEL_TEMPORAL_API_KEY"}
        ]
    else:
        tls = values["temporal"]["tlsSecret"]
        refs = [
            {"parameter": "cert", "name": tls, "key": "tls.crt"},
            {"parameter": "key", "name": tls, "key": "tls.key"},
            {"parameter": "ca", "name": tls, "key": "ca.crt"},
        ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _meta("keel-temporal", values),
        "spec": {"secretTargetRef": refs},
    }


def secret_example(values: dict[str, Any]) -> dict[str, Any]:
    placeholders = {key: f"REPLACE-ME-{key}" for key in SECRET_KEYS}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(values["secretName"], values),
        "type": "Opaque",
        # Placeholders, not keys: a worker refuses them (KEEL_IDENTITY_KEYS and
        # KEEL_ENCRYPTION_KEYS must be id:base64 32-byte keys). Delete the keys you do not use.
        "stringData": placeholders,
    }


def render(values: dict[str, Any]) -> Rendered:
    auth = values["temporal"]["auth"]
    if auth not in ("none", "apiKey", "mtls"):
        raise ValuesError(f"temporal.auth: {auth!r}; use none, apiKey or mtls")
    objects: list[dict[str, Any]] = []
    if values["createNamespace"]:
        ns = {"name": values["namespace"], "labels": _labels()}
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": ns})
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta("keel", values),
            "automountServiceAccountToken": False,
        }
    )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("keel-config", values),
            "data": config_data(values),
        }
    )
    payloads = values["payloads"]
    if not payloads["existingClaim"]:
        # KEEL_PAYLOAD_DIR must be one directory for every client and worker (README
        # "Configuration"): ReadWriteMany, e.g. NFS, EFS, Filestore, Azure Files, CephFS.
        pvc_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": payloads["size"]}},
        }
        if payloads["storageClassName"]:
            pvc_spec["storageClassName"] = payloads["storageClassName"]
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": _meta("keel-payloads", values),
                "spec": pvc_spec,
            }
        )
    auth_object = trigger_authentication(values)
    if auth_object:
        objects.append(auth_object)
    for pool in POOLS:
        objects += [
            deployment(pool, values),
            metrics_service(pool, values),
            scaled_object(pool, values),
        ]
    return Rendered(objects, secret_example(values))


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, width=100)


HEADER = "# Rendered by `python -m deploy.render`; edit the values file, not this file.\n"


def write(rendered: Rendered, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    manifests, secret = out / "keel.yaml", out / "secret.example.yaml"
    manifests.write_text(HEADER + dump(rendered.objects), encoding="utf-8")
    secret.write_text(
        HEADER + "# Placeholder values: fill in, or create the Secret another way "
        "(deploy/README.md).\n" + dump([rendered.secret_example]),
        encoding="utf-8",
    )
    return [manifests, secret]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.render", description=__doc__)
    parser.add_argument(
        "-f", "--values", type=Path, help="values file (default: the documented defaults only)"
    )
    parser.add_argument("-o", "--out", type=Path, default=Path("rendered"), help="output dir")
    args = parser.parse_args(argv)
    try:
        written = write(render(load_values(args.values)), args.out)
    except (ValuesError, OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
