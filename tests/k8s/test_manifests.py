"""k8s/: every manifest parses, every overlay renders, every object validates strictly
(KubeRay CRDs converted to JSON Schema; core kinds with kubernetes-validate), references
resolve, and every command a manifest runs parses with facetrain's own CLI."""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from facetrain.jobs.cli import build_parser
from facetrain.jobs.cli.config import load_config
from facetrain.pipeline.config import TrainConfig

from tests.k8s.crd_schema import crd_json_schema, validation_errors
from tests.k8s.kustomize import render

K8S = Path(__file__).resolve().parents[2] / "k8s"
OVERLAYS = ("dev-cpu", "prod-gpu")
# Every kustomization: the bases, and each overlay's platform and jobs.
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
K8S_VERSION = kubernetes_validate.latest_version()
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture(scope="module")
def crd_schemas(k8s_crds: Path) -> dict:
    return {kind: crd_json_schema(k8s_crds / name) for kind, name in CRD_FILES.items()}


def problems_of(obj: dict, crd_schemas: dict) -> list[str]:
    """Every validation problem of one rendered object, each naming kind/name and field path."""
    if obj["kind"] in crd_schemas:
        # The CRDs leave metadata as a plain object; the API server still wants DNS-1123 names
        # (KubeRay derives Service names from the cluster's, hence 63 characters).
        name = obj.get("metadata", {}).get("name", "")
        naming = (
            []
            if DNS_1123_LABEL.fullmatch(name)
            else [
                f"{obj['kind']}/{name}: metadata.name: expected a DNS-1123 label of at most 63 characters"
            ]
        )
        return naming + validation_errors(obj, crd_schemas[obj["kind"]])
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(part) for part in err.path) or "<root>"
        return [f"{obj['kind']}/{obj['metadata']['name']}: {path}: {err.message}"]
    return []


def test_every_yaml_file_parses_and_every_object_names_itself():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, f"{path}: empty"
        if path.name == "kustomization.yaml" or "configs" in path.parts:
            continue
        for doc in documents:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: {sorted(doc)}"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without metadata.name"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_validates_strictly(kustomization, crd_schemas):
    objects = render(K8S / kustomization)
    assert objects
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate objects in {kustomization}: {keys}"
    problems = [p for obj in objects for p in problems_of(obj, crd_schemas)]
    assert problems == []
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "facetrain"


def _platform_and_jobs(overlay: str) -> tuple[list[dict], list[dict]]:
    return render(K8S / "overlays" / overlay), render(K8S / "overlays" / overlay / "jobs")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_has_the_platform_in_one_namespace(overlay):
    platform, jobs = _platform_and_jobs(overlay)
    kinds = sorted(o["kind"] for o in platform)
    for kind in (
        "RayCluster",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Namespace",
    ):
        assert kind in kinds, f"{overlay}: no {kind}"
    assert sorted(o["kind"] for o in jobs) == ["RayJob"] * 3
    namespace = next(o["metadata"]["name"] for o in platform if o["kind"] == "Namespace")
    for obj in platform + jobs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_groups_autoscaling_bounds_and_gpu_limits(overlay):
    platform, _ = _platform_and_jobs(overlay)
    cluster = next(o for o in platform if o["kind"] == "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group[
            "groupName"
        ]
    assert "cpu" in groups
    if overlay == "prod-gpu":
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert groups["gpu"]["maxReplicas"] >= 8
    else:
        assert "gpu" not in groups
        assert (
            cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
            == "facetrain:0.1.0"
        )
    head_params = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert head_params["dashboard-host"] == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_within_the_overlay(overlay):
    platform, jobs = _platform_and_jobs(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in platform}
    cluster = next(o for o in platform if o["kind"] == "RayCluster")
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    templates += [o["spec"]["template"] for o in platform if o["kind"] == "Deployment"]
    for template in templates:
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert (
                    "PersistentVolumeClaim",
                    volume["persistentVolumeClaim"]["claimName"],
                ) in names
        for container in template["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
    for job in jobs:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    service = next(o for o in platform if o["kind"] == "Service")
    deployment = next(o for o in platform if o["kind"] == "Deployment")
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def _entrypoint_argv(job: dict) -> tuple[str, list[str]]:
    """(facetrain command, its arguments) of a RayJob entrypoint, either spelling."""
    argv = shlex.split(job["spec"]["entrypoint"])
    if argv[0] == "facetrain":
        return argv[1], argv[2:]
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("facetrain.jobs.ray."), argv
    assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
    return argv[2].removeprefix("facetrain.jobs.ray."), argv[3:]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_job_command_parses_with_the_facetrain_cli(overlay, capsys):
    platform, jobs = _platform_and_jobs(overlay)
    steps = {}
    for job in jobs:
        command, args = _entrypoint_argv(job)
        try:
            parsed = build_parser().parse_args([command, *args])
        except SystemExit:
            pytest.fail(
                f"{job['metadata']['name']}: `{job['spec']['entrypoint']}`: {capsys.readouterr().err}"
            )
        steps[job["metadata"]["labels"]["facetrain.io/step"]] = (command, parsed)
    assert all(command == step for step, (command, _) in steps.items())
    assert sorted(steps) == ["eval", "prep", "train"]
    # The training config the job names is the one the ConfigMap mounts, and it loads.
    config_map = next(
        o
        for o in platform
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "facetrain-config"
    )
    config_path = Path(steps["train"][1].config)
    assert config_path.parent == Path("/etc/facetrain") and config_path.name in config_map["data"]
    cfg = TrainConfig.model_validate(yaml.safe_load(config_map["data"][config_path.name]))
    assert cfg.data.shards == steps["prep"][1].out
    assert cfg.train.device == ("cuda" if overlay == "prod-gpu" else "cpu")


@pytest.mark.parametrize(
    "config", sorted(K8S.rglob("configs/*.yaml")), ids=lambda p: str(p.relative_to(K8S))
)
def test_shipped_training_configs_load(config):
    load_config(TrainConfig, config)


def test_mlflow_server_command_parses_with_mlflow_cli():
    from mlflow.cli import server

    deployment = next(o for o in render(K8S / "overlays" / "prod-gpu") if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    context = server.make_context("server", list(container["args"][1:]))
    assert context.params["backend_store_uri"] == "$(BACKEND_STORE_URI)"
    assert context.params["serve_artifacts"] is True
    config_map = next(
        o
        for o in render(K8S / "overlays" / "prod-gpu")
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "facetrain-mlflow"
    )
    for variable in ("BACKEND_STORE_URI", "ARTIFACTS_DESTINATION", "ALLOWED_HOSTS"):
        assert config_map["data"][variable]
    assert config_map["data"]["BACKEND_STORE_URI"].startswith("postgresql://")


@pytest.mark.parametrize("overlay", ["dev-cpu", "prod-gpu"])
def test_mlflow_server_runs_with_basic_auth_from_a_secret(overlay):
    from mlflow.cli import server

    deployment = next(o for o in render(K8S / "overlays" / overlay) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    context = server.make_context("server", list(container["args"][1:]))
    assert context.params["app_name"] == "basic-auth"
    env = {e["name"]: e for e in container["env"]}
    config_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    secret_key = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret_key["name"] == "facetrain-mlflow-auth"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    auth_volume = next(name for name, v in volumes.items() if "secret" in v)
    assert volumes[auth_volume]["secret"]["secretName"] == "facetrain-mlflow-auth"
    item = volumes[auth_volume]["secret"]["items"][0]
    assert config_path == f"{mounts[auth_volume]}/{item['path']}"
    if overlay == "prod-gpu":
        assert "PGPASSWORD" in env  # the overlay adds to the env, never replaces it


# A broken manifest is rejected with a message that names the field.
BREAKAGES = [
    ("RayCluster", lambda o: o["spec"]["headGroupSpec"].update(rayStartParam={}), "rayStartParam"),
    (
        "RayCluster",
        lambda o: o["spec"]["workerGroupSpecs"][0].update(maxReplicas="eight"),
        "workerGroupSpecs.0.maxReplicas",
    ),
    ("RayCluster", lambda o: o["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (
        "RayCluster",
        lambda o: o["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
            imagePullPolcy="Always"
        ),
        "imagePullPolcy",
    ),
    (
        "RayCluster",
        lambda o: o["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
            "requests"
        ].update(cpu=["2"]),
        "resources.requests.cpu",
    ),
    ("RayJob", lambda o: o["spec"].update(entrypointNumCPUs=1), "entrypointNumCPUs"),
    ("RayJob", lambda o: o["metadata"].update(name="Facetrain_Prep"), "metadata.name"),
    (
        "RayJob",
        lambda o: o["spec"].update(shutdownAfterJobFinishes="no"),
        "shutdownAfterJobFinishes",
    ),
    (
        "Deployment",
        lambda o: o["spec"]["template"]["spec"]["containers"][0].update(imagePullPolcy="Always"),
        "imagePullPolcy",
    ),
    ("Service", lambda o: o["spec"].update(selectr={}), "selectr"),
    (
        "PersistentVolumeClaim",
        lambda o: o["spec"].update(accessModes="ReadWriteMany"),
        "accessModes",
    ),
]


@pytest.mark.parametrize(
    "kind,break_it,field", BREAKAGES, ids=[f"{k}-{f}" for k, _, f in BREAKAGES]
)
def test_broken_manifest_is_rejected_naming_the_field(kind, break_it, field, crd_schemas):
    objects = render(K8S / "overlays" / "prod-gpu") + render(K8S / "overlays" / "prod-gpu" / "jobs")
    original = next(o for o in objects if o["kind"] == kind)
    assert problems_of(original, crd_schemas) == []
    broken = copy.deepcopy(original)
    break_it(broken)
    problems = problems_of(broken, crd_schemas)
    assert problems, f"{kind}: breaking {field} went unnoticed"
    assert any(field in problem for problem in problems), problems


def test_int_or_string_quantities_accept_both_spellings(crd_schemas):
    cluster = next(o for o in render(K8S / "overlays" / "dev-cpu") if o["kind"] == "RayCluster")
    container = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["cpu"] = 2
    container["resources"]["limits"]["memory"] = "4Gi"
    assert problems_of(cluster, crd_schemas) == []
