"""deploy/: the manifests render from the documented values and pass every check that
`kubectl apply` and KEDA would make (offline: Kubernetes' JSON schemas from
kubernetes-validate, KEDA's CRDs from its pinned module zip), and they match the code: the
queues each pool's workers really poll, Keel's real settings, the keys of the Secret.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from temporalio.worker import Worker

from deploy import keda, render, validate
from keel._lifeline import SHUTDOWN_GRACE_S
from keel._queues import HTTP
from temporal.search_attributes import DEV_SERVER_FLAGS
from workers import NAMES, process
from workers.components import Components

README = Path(render.__file__).parent / "README.md"

# The values the tests render: the documented defaults, and each way to reach Temporal.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "temporal-cloud-api-key": {
        "temporal": {"auth": "apiKey", "address": "eu-west-1.aws.api.temporal.io:7233"},
        "queuePrefix": "prod-",
    },
    "mtls-scale-to-zero": {
        "temporal": {"auth": "mtls"},
        "pools": {"planner": {"minReplicas": 0, "gpus": 2}, "tools": {"podUserNamespace": False}},
        "payloads": {"existingClaim": "shared-payloads"},
        "neo4j": {"url": ""},
        "config": {"KEEL_SANDBOX_MEMORY_MB": "1024", "KEEL_RECALL_TOKENS": "600"},
    },
}


@pytest.fixture(scope="session")
def keda_files() -> keda.KedaFiles:
    """KEDA's CRDs and Temporal scaler source: downloaded once per machine, sha256-checked."""
    return keda.fetch()


def rendered(variant: str) -> list[dict[str, Any]]:
    values = render.merge(render.DEFAULTS, VARIANTS[variant])
    out = render.render(values)
    return [*out.objects, out.secret_example]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_pass_every_check(variant: str, keda_files: keda.KedaFiles, tmp_path: Path):
    """Rendered to files and read back, as `kubectl apply -f` reads them."""
    values = render.merge(render.DEFAULTS, VARIANTS[variant])
    written = render.write(render.render(values), tmp_path)
    objects = validate.load(written)
    assert validate.check_all(objects, keda_files) == len(objects)
    kinds = [o["kind"] for o in objects]
    assert kinds.count("Deployment") == kinds.count("ScaledObject") == len(NAMES)
    assert kinds.count("TriggerAuthentication") == (variant != "defaults")


def test_documented_values_are_the_defaults():
    """values.example.yaml lists every value with its default: the docs cannot drift."""
    # as written (not merged with the defaults, which would fill in what it leaves out)
    assert yaml.safe_load(render.EXAMPLE_VALUES.read_text()) == render.DEFAULTS
    assert render.load_values(render.EXAMPLE_VALUES) == render.DEFAULTS


def test_unknown_or_misplaced_values_are_refused():
    with pytest.raises(render.ValuesError, match="unknown value 'pools.tools.sandboxThread'"):
        render.merge(render.DEFAULTS, {"pools": {"tools": {"sandboxThread": 4}}})
    values = render.merge(render.DEFAULTS, {"config": {"KEEL_NOT_A_SETTING": "1"}})
    with pytest.raises(render.ValuesError, match="not a Keel setting"):
        render.render(values)
    values = render.merge(render.DEFAULTS, {"config": {"KEEL_OPENAI_API_KEY": "sk-1"}})
    with pytest.raises(render.ValuesError, match="a secret"):
        render.render(values)


def polled_queues(prefix: str) -> dict[str, set[str]]:
    """The task queues each pool's workers poll, from the real worker builders (a Worker
    stand-in records the task queue instead of connecting; memory gets stand-ins for Qdrant
    and the graph, which the builder only hands to its activities)."""
    polled: dict[str, set[str]] = {}
    settings = validate.settings_from_env(
        {
            "KEEL_TEMPORAL_ADDRESS": "temporal:7233",
            "KEEL_QUEUE_PREFIX": prefix,
            "KEEL_PLANNER_MODEL": "triton",
            "KEEL_TRITON_URL": "127.0.0.1:8000",  # so the planner does not start one
        }
    )

    for pool in NAMES:

        class Recorder(Worker):
            def __init__(self, client: object, *, task_queue: str, **options: object) -> None:
                polled.setdefault(pool, set()).add(task_queue)  # noqa: B023

        components = Components.from_settings(settings)
        components._vectors, components._graph = object(), object()  # type: ignore[assignment]
        with mock.patch(f"workers.{pool}.Worker", Recorder):
            process.build_all(None, components, [pool])  # type: ignore[arg-type]
    return polled


@pytest.mark.parametrize("variant", ["defaults", "temporal-cloud-api-key"])
def test_each_pool_scales_on_the_queues_its_workers_poll(variant: str):
    objects = rendered(variant)
    prefix = render.merge(render.DEFAULTS, VARIANTS[variant])["queuePrefix"]
    polled = polled_queues(prefix)
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in of_kind(objects, "ScaledObject")}
    for deployment in of_kind(objects, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:2] == ["keel", "worker"]
        pool = container["command"][2]
        assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == pool
        triggers = scaled[deployment["metadata"]["name"]]["spec"]["triggers"]
        queues = {t["metadata"]["taskQueue"] for t in triggers}
        assert queues <= polled[pool], (pool, queues, polled[pool])
        # every queue of the pool scales it, except the per-API HTTP queues, whose rate the
        # server limits across replicas (none without KEEL_HTTP_APIS)
        assert {q for q in polled[pool] if not q.startswith(prefix + HTTP)} == queues
        for trigger in triggers:
            assert trigger["metadata"]["queueTypes"] == (
                "workflow,activity" if pool == "agent" else "activity"
            )
    assert {c["command"][2] for d in of_kind(objects, "Deployment") for c in
            d["spec"]["template"]["spec"]["containers"]} == set(NAMES)  # fmt: skip


def test_planner_gets_gpus_and_tools_gets_what_bwrap_needs():
    objects = rendered("defaults")
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in of_kind(objects, "Deployment")
    }
    planner = pods["keel-planner"]["containers"][0]
    assert planner["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in pods["keel-agent"]["containers"][0]["resources"]["limits"]
    tools = pods["keel-tools"]
    security = tools["containers"][0]["securityContext"]
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert security["appArmorProfile"] == {"type": "Unconfined"}
    assert security["procMount"] == "Unmasked" and tools["hostUsers"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}
    # 1 GiB + 16 runs x (512 MB address space + 2 x 64 MB tmpfs) = 11 GiB
    assert tools["containers"][0]["resources"]["limits"]["memory"] == "11Gi"
    for name, pod in pods.items():  # the others are Pod Security "restricted"
        if name != "keel-tools":
            assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True


def test_a_scaled_down_pod_drains_before_the_kubelet_kills_it():
    """SIGTERM: running calls get KEEL_WORKER_DRAIN_S, then the process ends itself within
    SHUTDOWN_GRACE_S; the kubelet's SIGKILL (terminationGracePeriodSeconds) comes after."""
    for deployment in of_kind(rendered("defaults"), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        drain_s = float(env["KEEL_WORKER_DRAIN_S"])
        assert drain_s > 0
        assert pod["terminationGracePeriodSeconds"] > drain_s + SHUTDOWN_GRACE_S


def test_secret_keys_are_keels_secret_settings():
    secret = rendered("defaults")[-1]
    assert secret["kind"] == "Secret"
    keys = set(secret["stringData"])
    assert {"KEEL_IDENTITY_KEYS", "KEEL_ENCRYPTION_KEYS", "KEEL_NEO4J_PASSWORD"} <= keys
    assert {"KEEL_TEMPORAL_API_KEY", "KEEL_OPENAI_API_KEY", "KEEL_ANTHROPIC_API_KEY"} <= keys
    assert all(v.startswith("REPLACE-ME-") for v in secret["stringData"].values())


# --- the checks can fail -----------------------------------------------------------------------


def broken(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(
        next(o for o in objects if o["kind"] == kind and name in o["metadata"]["name"])
    )


def test_broken_objects_are_refused(keda_files: keda.KedaFiles):
    objects = rendered("temporal-cloud-api-key")

    deployment = broken(objects, "Deployment", "planner")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(validate.ManifestError, match="replicas"):
        validate.check_kubernetes(deployment)
    deployment = broken(objects, "Deployment", "planner")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {}
    with pytest.raises(validate.ManifestError, match="limit"):
        validate.check_kubernetes(deployment)

    scaled = broken(objects, "ScaledObject", "tools")
    scaled["spec"]["minReplicaCont"] = 1
    with pytest.raises(validate.ManifestError, match="minReplicaCont"):
        validate.check_keda(scaled, keda_files)
    scaled = broken(objects, "ScaledObject", "tools")
    del scaled["spec"]["triggers"]
    with pytest.raises(validate.ManifestError, match="triggers"):
        validate.check_keda(scaled, keda_files)
    scaled = broken(objects, "ScaledObject", "tools")
    scaled["spec"]["minReplicaCount"] = 20
    with pytest.raises(validate.ManifestError, match="minReplicaCount > maxReplicaCount"):
        validate.check_keda(scaled, keda_files)
    scaled = broken(objects, "ScaledObject", "tools")
    scaled["spec"]["triggers"][0]["metadata"]["taskQueu"] = "keel-tools"
    with pytest.raises(validate.ManifestError, match="unknown metadata key 'taskQueu'"):
        validate.check_keda(scaled, keda_files)
    scaled = broken(objects, "ScaledObject", "tools")
    scaled["spec"]["triggers"][0]["metadata"]["targetQueueSize"] = "ten"
    with pytest.raises(validate.ManifestError, match="not a count"):
        validate.check_keda(scaled, keda_files)
    scaled = broken(objects, "ScaledObject", "tools")
    del scaled["spec"]["triggers"][0]["metadata"]["taskQueue"]
    with pytest.raises(validate.ManifestError, match="'taskQueue' is required"):
        validate.check_keda(scaled, keda_files)
    auth = broken(objects, "TriggerAuthentication", "temporal")
    auth["spec"]["secretTargetRef"][0]["parameter"] = "apikey"
    with pytest.raises(validate.ManifestError, match="'apikey' is not one"):
        validate.check_keda(auth, keda_files)


def test_broken_references_are_refused():
    def check(change) -> None:  # type: ignore[no-untyped-def]
        objects = copy.deepcopy(rendered("temporal-cloud-api-key"))
        change(objects)
        validate.check_references(objects)

    check(lambda objects: None)  # as rendered: fine

    def container(objects: list[dict[str, Any]], pool: str) -> dict[str, Any]:
        deployment = next(
            o for o in of_kind(objects, "Deployment") if pool in o["metadata"]["name"]
        )
        return deployment["spec"]["template"]["spec"]["containers"][0]

    def unknown_env(objects: list[dict[str, Any]]) -> None:
        container(objects, "llm")["env"].append({"name": "KEEL_METRICS_ADRESS", "value": "x"})

    with pytest.raises(validate.ManifestError, match="not Keel settings: KEEL_METRICS_ADRESS"):
        check(unknown_env)

    def missing_secret_key(objects: list[dict[str, Any]]) -> None:
        del of_kind(objects, "Secret")[0]["stringData"]["KEEL_NEO4J_PASSWORD"]

    with pytest.raises(validate.ManifestError, match="keel-secrets/KEEL_NEO4J_PASSWORD: no such"):
        check(missing_secret_key)

    def missing_api_key(objects: list[dict[str, Any]]) -> None:  # KEDA's reference too
        secret = of_kind(objects, "Secret")[0]
        del secret["stringData"]["KEEL_TEMPORAL_API_KEY"]

    with pytest.raises(validate.ManifestError, match="KEEL_TEMPORAL_API_KEY: no such key"):
        check(missing_api_key)

    def bad_setting(objects: list[dict[str, Any]]) -> None:
        of_kind(objects, "ConfigMap")[0]["data"]["KEEL_LOCAL_MODEL"] = "huge"

    with pytest.raises(validate.ManifestError, match="KEEL_LOCAL_MODEL='huge' is invalid"):
        check(bad_setting)

    def metrics_port_mismatch(objects: list[dict[str, Any]]) -> None:
        container(objects, "memory")["ports"][0]["containerPort"] = 9000

    with pytest.raises(validate.ManifestError, match="serves metrics on 9464"):
        check(metrics_port_mismatch)

    def orphan_scaler(objects: list[dict[str, Any]]) -> None:
        of_kind(objects, "ScaledObject")[0]["spec"]["scaleTargetRef"]["name"] = "keel-agents"

    with pytest.raises(validate.ManifestError, match="'keel-agents', which is not rendered"):
        check(orphan_scaler)


# --- the KEDA download ---------------------------------------------------------------------


def test_keda_zip_with_another_sha_is_refused():
    with pytest.raises(keda.KedaDownloadError, match="expected 74b59fe"):
        keda.check_zip(b"not the KEDA module")


def test_a_damaged_cache_is_not_used(keda_files: keda.KedaFiles, tmp_path: Path):
    """A cached file whose sha256 is not the pinned one is not used: fetch downloads again."""
    for path in (keda_files.scaled_objects_crd, keda_files.trigger_authentications_crd,
                 keda_files.temporal_scaler_go):  # fmt: skip
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert keda.fetch(tmp_path).scaled_objects_crd == tmp_path / "keda.sh_scaledobjects.yaml"
    (tmp_path / "keda.sh_scaledobjects.yaml").write_text("spec: {}\n")
    assert not keda._cached(tmp_path)


# --- the README ----------------------------------------------------------------------------


def test_readme_registers_keels_search_attributes():
    """deploy/README.md's `temporal operator search-attribute create` lines are exactly the
    attributes `keel dev` registers, with their types."""
    text = README.read_text(encoding="utf-8")
    found = dict(re.findall(r"search-attribute create [^\n]*?--name (\w+) --type (\w+)", text))
    # what `keel dev` registers: ["--search-attribute", "KeelStatus=Keyword", ...]
    expected = dict(flag.split("=") for flag in DEV_SERVER_FLAGS[1::2])
    assert found == expected
