"""Offline checks of the deployment files in infra/ (no Kubernetes, Docker or network here).

1. Every KubeRay manifest (kind RayCluster or RayJob, anywhere under infra/) validates against
   the openAPIV3Schema of its kind and version in the KubeRay CRDs of the shared schema folder,
   made strict: an unknown key is an error wherever the schema lists `properties`, as the API
   server's pruning would silently drop it. The Flink manifests' pod templates validate against
   the same (Kubernetes) PodTemplateSpec schema; their Deployment, Service and claim fields and
   the token Secret against small schemas written here.
2. Rules the schemas do not carry: entrypoints call a real tokenmill subcommand with a config
   that exists and parses, images are ours or pinned, Ray versions match the installed ray,
   every container has cpu and memory requests and limits, autoscaling is on where it has
   bounds, RayJobs have a retry limit and a deadline, token auth names the shipped Secret, and
   Services select pods that expose the ports they target.
3. infra/dataflow/launch.sh parses, fails with a usage message before doing anything when its
   settings are missing, and passes the right overrides to `tokenmill run`.
4. The Dockerfile's targets and the versions of its base images.

Not exercised: the CRDs' CEL rules (x-kubernetes-validations), the KubeRay operator's own
webhook checks, image builds, and anything that needs a cluster.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema  # installed with ray (one of its dependencies)
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
# The shared schema folder sits next to the repo folder (CI: a clean clone beside it).
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kuberay"

RAY_IMAGE = "REGISTRY/tokenmill:0.1"
BEAM_IMAGE = "REGISTRY/tokenmill-beam:0.1"
PROJECT_IMAGES = {RAY_IMAGE, BEAM_IMAGE}
TESTED_PYTHON = "3.11"  # README: "3.11 tested"
TOKEN_SECRET_FILE = INFRA / "kuberay" / "ray-token-secret.yaml"
RAY_CLUSTER_NAME = "tokenmill"  # KubeRay's head Service: tokenmill-head-svc
KUBERAY_KINDS = ("RayCluster", "RayJob")
LAUNCH = INFRA / "dataflow" / "launch.sh"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_all(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=_Loader) if d is not None]


@functools.lru_cache(maxsize=None)
def _manifests() -> tuple[tuple[str, int, dict], ...]:
    """Every Kubernetes object (a YAML document with apiVersion and kind) under infra/."""
    found = []
    for path in sorted(INFRA.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        for i, doc in enumerate(_load_all(path)):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                found.append((str(path.relative_to(REPO)), i, doc))
    return tuple(found)


def _of_kind(*kinds: str) -> list[tuple[str, int, dict]]:
    return [m for m in _manifests() if m[2]["kind"] in kinds]


def _ids(items) -> list[str]:
    return [f"{where}#{i}:{doc['kind']}" for where, i, doc in items]


def _cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster specs of a KubeRay object (a RayJob holds one)."""
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
        return [doc["spec"]["rayClusterSpec"]]
    return []


def _containers(node, path: str = ""):
    """(path, container) for every container and init container anywhere in `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if key in ("containers", "initContainers") and isinstance(value, list):
                for j, c in enumerate(value):
                    yield f"{sub}[{j}]", c
            else:
                yield from _containers(value, sub)
    elif isinstance(node, list):
        for j, value in enumerate(node):
            yield from _containers(value, f"{path}[{j}]")


# --- 1. schemas -------------------------------------------------------------------------------

def strict_schema(schema):
    """A copy of a CRD's structural schema with Kubernetes' rules made explicit for jsonschema:
    objects that list `properties` allow no other keys (unless x-kubernetes-preserve-unknown-fields),
    x-kubernetes-int-or-string takes an integer or a string, `nullable` admits null."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [strict_schema(s) for s in value]
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if out.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


_format_checker = jsonschema.FormatChecker()


@_format_checker.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2 ** 31) <= value < 2 ** 31


@_format_checker.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2 ** 63) <= value < 2 ** 63


@functools.lru_cache(maxsize=None)
def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from every CRD in the shared schema folder."""
    if not SCHEMA_DIR.is_dir():
        pytest.fail(f"the KubeRay CRD schemas are missing: expected the folder {SCHEMA_DIR} "
                    "(shared/schemas/kuberay next to the repo folder, with ray.io_rayclusters.yaml and "
                    "ray.io_rayjobs.yaml); the infra manifests cannot be validated without them")
    schemas = {}
    for path in sorted(SCHEMA_DIR.glob("*.y*ml")):
        for doc in _load_all(path):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = strict_schema(version["schema"]["openAPIV3Schema"])
    for kind in KUBERAY_KINDS:
        if ("ray.io/v1", kind) not in schemas:
            pytest.fail(f"no served ray.io/v1 {kind} CRD in {SCHEMA_DIR}")
    return schemas


def _errors(schema: dict, instance) -> list[str]:
    validator = jsonschema.Draft7Validator(schema, format_checker=_format_checker)
    out = []
    for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
        out.append(f"{where or '(top level)'}: {e.message}")
    return out


def _crd_errors(doc: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    schemas = _crd_schemas()
    if key not in schemas:
        return [f"no CRD serves apiVersion {key[0]!r} kind {key[1]!r} (have {sorted(schemas)})"]
    return _errors(schemas[key], doc) + _errors(METADATA_DOC, doc)


def _obj(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
_DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
             "maxLength": 253}
_METADATA = {
    **_obj({"name": _DNS_NAME, "generateName": {"type": "string", "pattern": r"^[a-z0-9][-a-z0-9]*$"},
            "namespace": _DNS_NAME, "labels": _STR_MAP, "annotations": _STR_MAP}),
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}
# Applied to every manifest on top of its kind's schema (the CRDs leave metadata open).
METADATA_DOC = {"type": "object", "required": ["metadata"], "properties": {"metadata": _METADATA}}


def _core_schemas() -> dict[tuple[str, str], dict]:
    """Small strict schemas for the core objects we ship; pod templates use the Kubernetes
    PodTemplateSpec schema that the RayCluster CRD embeds (generated from the Kubernetes API)."""
    pod_template = _crd_schemas()[("ray.io/v1", "RayCluster")]["properties"]["spec"]["properties"][
        "headGroupSpec"]["properties"]["template"]
    top = {"apiVersion": _STR, "kind": _STR, "metadata": _METADATA}
    selector = _obj({"matchLabels": _STR_MAP}, ("matchLabels",))
    deployment = _obj({**top, "spec": _obj({
        "replicas": {"type": "integer", "minimum": 0},
        "selector": selector,
        "strategy": _obj({"type": {"enum": ["Recreate", "RollingUpdate"]},
                          "rollingUpdate": _obj({"maxSurge": {"type": ["integer", "string"]},
                                                 "maxUnavailable": {"type": ["integer", "string"]}})}),
        "template": pod_template,
        "minReadySeconds": _INT, "revisionHistoryLimit": _INT, "progressDeadlineSeconds": _INT,
    }, ("selector", "template"))}, ("apiVersion", "kind", "metadata", "spec"))
    service_port = _obj({"name": _STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                         "targetPort": {"type": ["integer", "string"]}, "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                         "nodePort": _INT, "appProtocol": _STR}, ("port",))
    service = _obj({**top, "spec": _obj({
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "selector": _STR_MAP, "ports": {"type": "array", "items": service_port, "minItems": 1},
        "clusterIP": _STR, "sessionAffinity": {"enum": ["None", "ClientIP"]},
    }, ("ports",))}, ("apiVersion", "kind", "metadata", "spec"))
    secret = _obj({**top, "type": _STR, "data": _STR_MAP, "stringData": _STR_MAP, "immutable": {"type": "boolean"}},
                  ("apiVersion", "kind", "metadata"))
    quantity = {"type": ["string", "integer"]}
    pvc = _obj({**top, "spec": _obj({
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                                            "ReadWriteOncePod"]}, "minItems": 1},
        "resources": _obj({"requests": _obj({"storage": quantity}, ("storage",)), "limits": _STR_MAP},
                          ("requests",)),
        "storageClassName": _STR, "volumeMode": {"enum": ["Filesystem", "Block"]},
    }, ("accessModes", "resources"))}, ("apiVersion", "kind", "metadata", "spec"))
    return {("apps/v1", "Deployment"): deployment, ("v1", "Service"): service, ("v1", "Secret"): secret,
            ("v1", "PersistentVolumeClaim"): pvc}


def test_infra_has_the_expected_manifests():
    kinds = {doc["kind"] for _, _, doc in _manifests()}
    assert {"RayCluster", "RayJob", "Secret", "Deployment", "Service"} <= kinds, kinds
    assert not (INFRA / "rayjob.yaml").exists(), "infra/rayjob.yaml is replaced by infra/kuberay/rayjob.yaml"


def test_every_manifest_has_a_schema():
    """No Kubernetes object in infra/ escapes validation."""
    known = set(_crd_schemas()) | set(_core_schemas())
    unknown = [f"{w}#{i}: {d['apiVersion']} {d['kind']}" for w, i, d in _manifests()
               if (d["apiVersion"], d["kind"]) not in known]
    assert not unknown, f"no schema for {unknown}; add one to tests/test_infra.py"


@pytest.mark.parametrize("where,index,doc", _of_kind(*KUBERAY_KINDS), ids=_ids(_of_kind(*KUBERAY_KINDS)))
def test_kuberay_manifest_validates_against_crd(where, index, doc):
    errors = _crd_errors(doc)
    assert not errors, f"{where} (document {index}) is not a valid {doc['kind']}:\n  " + "\n  ".join(errors)


_CORE = [m for m in _manifests() if m[2]["kind"] not in KUBERAY_KINDS]


@pytest.mark.parametrize("where,index,doc", _CORE, ids=_ids(_CORE))
def test_core_manifest_validates(where, index, doc):
    schemas = _core_schemas()
    key = (doc["apiVersion"], doc["kind"])
    if key not in schemas:
        pytest.fail(f"{where}: no schema for {key}")
    errors = _errors(schemas[key], doc)
    assert not errors, f"{where} (document {index}) is not a valid {doc['kind']}:\n  " + "\n  ".join(errors)


def _raycluster() -> dict:
    docs = [d for w, _, d in _of_kind("RayCluster") if w == "infra/kuberay/raycluster.yaml"]
    assert len(docs) == 1, "infra/kuberay/raycluster.yaml holds one RayCluster"
    return copy.deepcopy(docs[0])


def test_crd_check_rejects_a_misspelled_key():
    doc = _raycluster()
    doc["spec"]["enableInTreeAutoscalling"] = doc["spec"].pop("enableInTreeAutoscaling")
    errors = _crd_errors(doc)
    assert any("enableInTreeAutoscalling" in e for e in errors), errors


def test_crd_check_rejects_a_misspelled_key_inside_the_pod_template():
    doc = _raycluster()
    container = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    errors = _crd_errors(doc)
    assert any("resource" in e and "containers[0]" in e for e in errors), errors


def test_crd_check_rejects_wrong_types():
    doc = _raycluster()
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "16"  # integer in the schema
    assert any("maxReplicas" in e for e in _crd_errors(doc))
    doc = _raycluster()
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # map of strings
    assert any("num-cpus" in e for e in _crd_errors(doc))
    doc = _raycluster()
    doc["spec"]["authOptions"]["mode"] = "tokens"  # enum
    assert any("authOptions.mode" in e for e in _crd_errors(doc))


def test_crd_check_takes_int_or_string_quantities():
    doc = _raycluster()
    resources = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    resources["limits"]["cpu"] = 16
    resources["requests"]["cpu"] = "16"
    assert not _crd_errors(doc)
    resources["limits"]["cpu"] = [16]
    assert _crd_errors(doc)


def test_strict_schema_rules():
    schema = strict_schema({"type": "object", "properties": {
        "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
    }})
    assert not _errors(schema, {"closed": {"a": "x"}, "open": {"b": 1}, "map": {"k": "v"}, "port": 80})
    assert not _errors(schema, {"port": "http"})
    assert _errors(schema, {"closed": {"b": "x"}})
    assert _errors(schema, {"other": 1})
    assert _errors(schema, {"port": 1.5})


# --- 2. rules the schemas do not carry --------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tokenmill_subcommands() -> frozenset[str]:
    import argparse

    from pipelines import cli

    build = getattr(cli, "build_parser", None)
    if build is not None:
        for action in build()._actions:
            if isinstance(action, argparse._SubParsersAction):
                return frozenset(action.choices)
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"usage: tokenmill .*?\{([a-z0-9,-]+)\}", out.stdout, re.S)
    assert m, f"no subcommand list in `tokenmill --help`:\n{out.stdout}{out.stderr}"
    return frozenset(m.group(1).split(","))


def test_subcommand_list_is_read():
    assert {"run", "plan", "run-step", "validate"} <= _tokenmill_subcommands()


CONFIG_SUBCOMMANDS = {"run", "plan", "validate"}  # their first argument is a config file


@pytest.mark.parametrize("where,index,doc", _of_kind("RayJob"), ids=_ids(_of_kind("RayJob")))
def test_rayjob_entrypoint_runs_a_tokenmill_command_on_a_config_that_exists(where, index, doc):
    from pipelines.config import load_config

    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "tokenmill", f"{where}: the entrypoint must call tokenmill: {argv}"
    assert len(argv) > 1 and argv[1] in _tokenmill_subcommands(), (
        f"{where}: {argv[1:2]} is not a tokenmill subcommand ({sorted(_tokenmill_subcommands())})")
    if argv[1] not in CONFIG_SUBCOMMANDS:
        return
    config = argv[2]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert config.startswith("configs/"), f"{where}: the config is read from the image's configs/: {config}"
    assert (REPO / config).is_file(), f"{where}: {config} does not exist in the repo (the image copies configs/)"
    cfg = load_config(str(REPO / config), overrides)  # the same keys and values as on the cluster
    assert cfg.engine.kind == "ray", f"{where}: {config} must use engine.kind ray"
    assert cfg.engine.address == "auto", f"{where}: a RayJob driver joins its own cluster: engine.address=auto"


def _image_problem(image: str) -> str | None:
    if image in PROJECT_IMAGES:
        return None
    if image.startswith("REGISTRY/"):
        return f"{image}: not an image this project builds ({sorted(PROJECT_IMAGES)})"
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{image}: untagged"
    if last.rsplit(":", 1)[1] in ("latest", ""):
        return f"{image}: not pinned (latest)"
    return None


def test_images_are_ours_or_pinned():
    problems, seen = [], 0
    for where, _, doc in _manifests():
        images = [(p, c.get("image")) for p, c in _containers(doc)]
        for spec in _cluster_specs(doc):
            if "autoscalerOptions" in spec:
                images.append(("autoscalerOptions", spec["autoscalerOptions"].get("image")))
        for path, image in images:
            seen += 1
            problem = "no image" if not image else _image_problem(image)
            if problem:
                problems.append(f"{where} {path}: {problem}")
    assert seen and not problems, "\n".join(problems)
    assert _image_problem("flink:latest") and _image_problem("flink") and _image_problem("REGISTRY/other:1")
    assert not _image_problem("apache/beam_flink1.19_job_server:2.77.0")


@pytest.mark.parametrize("where,index,doc", _of_kind(*KUBERAY_KINDS), ids=_ids(_of_kind(*KUBERAY_KINDS)))
def test_ray_groups_share_the_image_and_the_installed_ray_version(where, index, doc):
    installed = importlib.metadata.version("ray")
    for spec in _cluster_specs(doc):
        assert spec.get("rayVersion") == installed, (
            f"{where}: rayVersion {spec.get('rayVersion')!r} != the installed ray {installed}")
        images = {c["image"] for _, c in _containers(spec)}
        if spec.get("autoscalerOptions", {}).get("image"):
            images.add(spec["autoscalerOptions"]["image"])
        assert images == {RAY_IMAGE}, f"{where}: every Ray container runs {RAY_IMAGE}, got {sorted(images)}"
    for _, c in _containers(doc.get("spec", {}).get("submitterPodTemplate", {})):
        assert c["image"] == RAY_IMAGE, f"{where}: the job submitter runs {RAY_IMAGE} (its ray CLI)"


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}


def _quantity(value) -> float:
    m = _QUANTITY.match(str(value))
    assert m, f"not a Kubernetes quantity: {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _resource_problems(label: str, resources) -> list[str]:
    problems = []
    resources = resources or {}
    for kind in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in (resources.get(kind) or {}):
                problems.append(f"{label}: no {kind}.{res}")
    for res in ("cpu", "memory"):
        req, lim = (resources.get("requests") or {}).get(res), (resources.get("limits") or {}).get(res)
        if req is not None and lim is not None and _quantity(req) > _quantity(lim):
            problems.append(f"{label}: requests.{res} {req} > limits.{res} {lim}")
    return problems


def test_every_container_has_cpu_and_memory_requests_and_limits():
    problems, seen = [], 0
    for where, _, doc in _manifests():
        for path, c in _containers(doc):
            seen += 1
            problems += _resource_problems(f"{where} {path} ({c.get('name')})", c.get("resources"))
        for spec in _cluster_specs(doc):
            if spec.get("enableInTreeAutoscaling"):
                seen += 1  # KubeRay's autoscaler sidecar takes its resources from autoscalerOptions
                problems += _resource_problems(f"{where} autoscalerOptions",
                                               spec.get("autoscalerOptions", {}).get("resources"))
    assert seen and not problems, "\n".join(problems)


def test_resource_check_catches_missing_and_inverted_resources():
    assert _resource_problems("x", {"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}}) == [
        "x: no requests.memory"]
    assert _resource_problems("x", {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "1500m",
                                                                                           "memory": "2048Mi"}}) == [
        "x: requests.cpu 2 > limits.cpu 1500m"]


@pytest.mark.parametrize("where,index,doc", _of_kind(*KUBERAY_KINDS), ids=_ids(_of_kind(*KUBERAY_KINDS)))
def test_autoscaling_is_on_where_worker_groups_have_bounds(where, index, doc):
    for spec in _cluster_specs(doc):
        for group in spec.get("workerGroupSpecs", []):
            name = group.get("groupName")
            if "minReplicas" in group or "maxReplicas" in group:
                assert spec.get("enableInTreeAutoscaling") is True, (
                    f"{where}: worker group {name} sets min/maxReplicas but enableInTreeAutoscaling is not true "
                    "(without it KubeRay never scales between them)")
                lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2 ** 31 - 1)
                assert lo <= group.get("replicas", lo) <= hi, f"{where}: {name}: replicas outside [min, max]"
        if spec.get("enableInTreeAutoscaling"):
            assert spec.get("autoscalerOptions"), f"{where}: autoscaling without autoscalerOptions"


def test_head_only_coordinates_and_exposes_dashboard_and_client():
    for where, _, doc in _of_kind(*KUBERAY_KINDS):
        for spec in _cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: head num-cpus must be \"0\""
            ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0].get("ports", [])}
            assert {8265, 10001} <= ports, f"{where}: the head exposes the dashboard (8265) and client (10001)"
    cluster = _raycluster()
    assert cluster["metadata"]["name"] == RAY_CLUSTER_NAME, (
        "the RayCluster is named tokenmill: KubeRay's head Service is then tokenmill-head-svc, "
        "the address the Airflow workers submit to")


@pytest.mark.parametrize("where,index,doc", _of_kind("RayJob"), ids=_ids(_of_kind("RayJob")))
def test_rayjob_is_bounded_and_cleans_up(where, index, doc):
    spec = doc["spec"]
    assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 0, f"{where}: backoffLimit"
    assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0, (
        f"{where}: activeDeadlineSeconds")
    assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: shutdownAfterJobFinishes"
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int), f"{where}: ttlSecondsAfterFinished"


def _token_secret() -> dict:
    secrets = [d for d in _load_all(TOKEN_SECRET_FILE) if d.get("kind") == "Secret"]
    assert len(secrets) == 1, f"{TOKEN_SECRET_FILE.relative_to(REPO)} holds one Secret"
    return secrets[0]


def test_token_secret_has_the_key_kuberay_reads():
    secret = _token_secret()
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    assert keys == {"auth_token"}, f"KubeRay reads the token from the data key auth_token, got {sorted(keys)}"
    assert "openssl rand -hex 32" in TOKEN_SECRET_FILE.read_text(), "the template says how to generate a token"


@pytest.mark.parametrize("where,index,doc", _of_kind(*KUBERAY_KINDS), ids=_ids(_of_kind(*KUBERAY_KINDS)))
def test_token_auth_uses_the_shipped_secret(where, index, doc):
    name = _token_secret()["metadata"]["name"]
    for spec in _cluster_specs(doc):
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token", f"{where}: authOptions.mode must be token (Ray 2.60's default)"
        assert auth.get("secretName") == name, f"{where}: authOptions.secretName must be {name}"
        if doc["kind"] == "RayJob":
            assert not auth.get("enableK8sTokenAuth"), f"{where}: KubeRay rejects K8s token auth in a RayJob"


def _pod_labels(doc: dict) -> dict:
    return doc["spec"]["template"].get("metadata", {}).get("labels", {})


def test_deployments_select_their_own_pods():
    for where, _, doc in _of_kind("Deployment"):
        match = doc["spec"]["selector"]["matchLabels"]
        labels = _pod_labels(doc)
        assert match.items() <= labels.items(), f"{where}: selector {match} does not match pod labels {labels}"


def test_services_select_pods_with_the_ports_they_target():
    deployments = [d for _, _, d in _of_kind("Deployment")]
    for where, _, svc in _of_kind("Service"):
        selector = svc["spec"].get("selector", {})
        pods = [d for d in deployments if selector and selector.items() <= _pod_labels(d).items()]
        assert pods, f"{where}: Service {svc['metadata']['name']} selects no Deployment's pods ({selector})"
        for pod in pods:
            ports = [p for c in pod["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
            for sp in svc["spec"]["ports"]:
                target = sp.get("targetPort", sp["port"])
                assert any(target in (p.get("name"), p["containerPort"]) for p in ports), (
                    f"{where}: port {sp} targets {target!r}, which no container of {pod['metadata']['name']} exposes")


def test_volume_claims_exist():
    claims = {d["metadata"]["name"] for _, _, d in _of_kind("PersistentVolumeClaim")}
    for where, _, doc in _of_kind("Deployment"):
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{where}: unknown claim in {v}"
        for _, c in _containers(pod):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: {c['name']} mounts undefined volume {m['name']}"


def _service(name: str) -> dict:
    found = [d for _, _, d in _of_kind("Service") if d["metadata"]["name"] == name]
    assert len(found) == 1, f"one Service named {name} in infra/"
    return found[0]


def _deployment(name: str) -> dict:
    found = [d for _, _, d in _of_kind("Deployment") if d["metadata"]["name"] == name]
    assert len(found) == 1, f"one Deployment named {name} in infra/"
    return found[0]


FLINK_BEAM_OPTIONS = [
    "--runner=PortableRunner",
    "--job_endpoint=beam-flink-jobserver:8099",
    "--artifact_endpoint=beam-flink-jobserver:8098",
    "--environment_type=EXTERNAL",
    "--environment_config=localhost:50000",
]


def test_flink_deployment_is_wired_together():
    jobserver = _deployment("beam-flink-jobserver")
    (js,) = jobserver["spec"]["template"]["spec"]["containers"]
    assert js["image"] == "apache/beam_flink1.19_job_server:2.77.0"
    jm_rest = {p["name"]: p["port"] for p in _service("flink-jobmanager")["spec"]["ports"]}["webui"]
    assert f"--flink-master=flink-jobmanager:{jm_rest}" in js["args"]
    assert "--job-host=0.0.0.0" in js["args"], "the job server must listen beyond localhost"
    js_ports = {p["port"] for p in _service("beam-flink-jobserver")["spec"]["ports"]}
    assert {8099, 8098, 8097} <= js_ports
    artifacts = [a.split("=", 1)[1] for a in js["args"] if a.startswith("--artifacts-dir=")]
    assert artifacts, "the job server's --artifacts-dir must be a place the TaskManagers read"

    tm = _deployment("flink-taskmanager")["spec"]["template"]["spec"]
    sidecars = [c for c in tm["containers"] if c["image"] == BEAM_IMAGE]
    assert len(sidecars) == 1, "each TaskManager pod carries one Beam SDK worker pool"
    pool = sidecars[0]
    assert pool.get("args") == ["--worker_pool"] and not pool.get("command"), "the image's boot launcher, as a pool"
    assert 50000 in {p["containerPort"] for p in pool.get("ports", [])}
    flink = [c for c in tm["containers"] if c["image"].startswith("flink:")]
    assert len(flink) == 1 and "flink-jobmanager" in str(flink[0].get("env"))
    if not artifacts[0].startswith(("gs://", "s3://")):  # a shared volume, at the same path
        assert any(m["mountPath"] == artifacts[0] for m in flink[0].get("volumeMounts", [])), (
            "the TaskManager must see the job server's --artifacts-dir at the same path")
    for name, _ in (("flink-jobmanager", 0), ("flink-taskmanager", 0)):
        (c,) = [c for c in _deployment(name)["spec"]["template"]["spec"]["containers"] if c["image"].startswith("flink:")]
        assert c["image"] == "flink:1.19", f"{name}: Flink 1.19 (the job server is built for it)"

    readme = (INFRA / "flink" / "README.md").read_text()
    for option in FLINK_BEAM_OPTIONS:
        assert option in readme, f"infra/flink/README.md must give the option {option}"


def test_beam_flink_profile_matches_the_services():
    """configs/beam-flink.yaml (the profile infra/flink/README.md names) points at these Services."""
    from pipelines.config import load_config

    path = REPO / "configs" / "beam-flink.yaml"
    assert path.is_file(), "configs/beam-flink.yaml does not exist (yet)"
    cfg = load_config(str(path))
    assert cfg.engine.kind == "beam"
    missing = [o for o in FLINK_BEAM_OPTIONS if o not in cfg.engine.beam.options]
    assert not missing, f"configs/beam-flink.yaml engine.beam.options lacks {missing}"


def test_head_service_name_is_used_consistently():
    """Anything in the repo that names a KubeRay head Service names ours."""
    pattern = re.compile(r"\b([a-z0-9][a-z0-9-]*)-head-svc\b")
    wrong = []
    for folder in ("infra", "dags", "configs", "docs", "pipelines"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".md", ".sh", ".cfg", ".json"):
                for m in pattern.finditer(path.read_text(encoding="utf-8", errors="replace")):
                    if m.group(1) != RAY_CLUSTER_NAME:
                        wrong.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not wrong, f"the head Service is {RAY_CLUSTER_NAME}-head-svc: {wrong}"


def test_infra_readme_lists_every_file():
    readme = (INFRA / "README.md").read_text()
    missing = [str(p.relative_to(INFRA)) for p in sorted(INFRA.rglob("*"))
               if p.is_file() and p.parts[len(INFRA.parts)] != "airflow"  # infra/airflow/ has its own README
               and f"`{p.relative_to(INFRA)}`" not in readme]
    assert not missing, f"infra/README.md's table does not list {missing}"


# --- 3. infra/dataflow/launch.sh --------------------------------------------------------------

def test_launch_script_parses():
    out = subprocess.run(["bash", "-n", str(LAUNCH)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = LAUNCH.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert 'pip install ".[gcs]" "apache-beam[gcp]"' in text, "the header says what to install"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launch_script_passes_shellcheck():
    out = subprocess.run(["shellcheck", str(LAUNCH)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    """A PATH folder with `docker` and `tokenmill` stand-ins that record their arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for tool in ("docker", "tokenmill"):
        script = bin_dir / tool
        script.write_text('#!/bin/sh\n{ printf "%s" "$(basename "$0")"; for a in "$@"; do printf "\\037%s" "$a"; done; '
                          'printf "\\n"; } >> "$CALLS"\n')
        script.chmod(0o755)
    return bin_dir, log


def _calls(log: Path) -> list[list[str]]:
    return [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []


def _clean_env(bin_dir: Path, log: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "CALLS": str(log), "LC_ALL": "C", **extra}


def test_launch_script_without_settings_prints_usage_and_does_nothing(tmp_path):
    bin_dir, log = _fake_tools(tmp_path)
    out = subprocess.run(["bash", str(LAUNCH)], env=_clean_env(bin_dir, log), cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "usage:" in out.stderr and "PROJECT" in out.stderr, out.stderr
    assert _calls(log) == [], "nothing may be built or run before the settings are checked"
    # One missing setting is enough to stop it.
    out = subprocess.run(["bash", str(LAUNCH), "--project", "p", "--region", "r", "--bucket", "b"],
                         env=_clean_env(bin_dir, log), cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "IMAGE" in out.stderr and _calls(log) == []


def test_launch_script_builds_then_runs_with_the_dataflow_overrides(tmp_path):
    from pipelines.config import apply_overrides

    bin_dir, log = _fake_tools(tmp_path)
    image = "europe-west4-docker.pkg.dev/p/tokenmill/tokenmill-beam:0.1"
    # configs/laptop.yaml stands in for configs/beam-dataflow.yaml: this checks the arguments.
    env = _clean_env(bin_dir, log, PROJECT="p", REGION="europe-west4", BUCKET="gs://b/", IMAGE=image)
    out = subprocess.run(["bash", str(LAUNCH), "--config", "configs/laptop.yaml", "--", "--set", "engine.workers=3"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    calls = _calls(log)
    assert calls[0] == ["docker", "build", "-f", "infra/Dockerfile", "--target", "beam-sdk", "-t", image, "."]
    assert calls[1] == ["docker", "push", image]
    tool, sub, config, *rest = calls[2]
    assert (tool, sub, config) == ("tokenmill", "run", "configs/laptop.yaml")
    assert rest[::2] == ["--set"] * (len(rest) // 2)
    raw = apply_overrides({}, rest[1::2])
    assert raw["run_root"] == "gs://b/tokenmill-runs"
    assert raw["input"]["paths"] == ["gs://b/raw/*.jsonl.zst"]
    assert raw["engine"]["beam"]["options"] == [
        "--runner=DataflowRunner", "--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp",
        "--staging_location=gs://b/staging", f"--sdk_container_image={image}", "--experiments=use_runner_v2"]
    assert raw["engine"]["workers"] == 3
    assert len(calls) == 3


def test_launch_script_names_the_dataflow_profile():
    from pipelines.config import load_config

    assert "configs/beam-dataflow.yaml" in LAUNCH.read_text()
    path = REPO / "configs" / "beam-dataflow.yaml"
    assert path.is_file(), "configs/beam-dataflow.yaml does not exist (yet)"
    assert load_config(str(path)).engine.kind == "beam"


# --- 4. the Dockerfile ------------------------------------------------------------------------

def _stages() -> dict[str, str]:
    """Stage name -> base image, from the Dockerfile's FROM lines."""
    text = (INFRA / "Dockerfile").read_text()
    stages = {}
    for m in re.finditer(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", text, re.M | re.I):
        stages[m.group(2) or f"#{len(stages)}"] = m.group(1)
    return stages


def test_dockerfile_targets_and_base_versions():
    stages = _stages()
    assert {"beam-sdk", "ray"} <= set(stages), f"targets: {sorted(stages)}"
    assert list(stages)[-1] == "ray", "the default target (the last stage) is the Ray image"
    beam_version = importlib.metadata.version("apache-beam")
    sdk = [img for img in stages.values() if img.startswith("apache/beam_python")]
    assert sdk == [f"apache/beam_python{TESTED_PYTHON}_sdk:{beam_version}"], (
        f"the boot launcher comes from the SDK image of the installed Beam {beam_version}: {sdk}")
    assert stages.get("beam-boot") == sdk[0]
    pythons = [img for img in stages.values() if img.startswith("python:")]
    assert pythons and all(re.fullmatch(rf"python:{re.escape(TESTED_PYTHON)}(-[a-z0-9]+)*", p) for p in pythons), (
        f"the base image is Python {TESTED_PYTHON}: {pythons}")
    text = (INFRA / "Dockerfile").read_text()
    assert "--from=beam-boot /opt/apache/beam" in text, "the boot launcher is copied into the image"
    assert re.search(r'ENTRYPOINT \["/opt/apache/beam/boot"\]', text)
