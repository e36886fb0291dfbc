"""deploy/kuberay/: the manifests checked offline, the KubeRay fields against deploy/kuberay/schema.json
(written from KubeRay's CRDs) and the Kubernetes core types inside them (pod templates, env vars, resources,
metadata) with the official Kubernetes client; plus the settings and secrets they pass to Fusion."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient

from fusion_core.config import Settings, resolve_profile

KUBERAY = Path(__file__).resolve().parent.parent / "deploy" / "kuberay"
SCHEMA = json.loads((KUBERAY / "schema.json").read_text())
MANIFESTS = ("raycluster.yaml", "rayjob-nightly.yaml")
API = ApiClient()

# Env vars that must come from a Kubernetes Secret in every container that has them.
SECRET_ENV = {"RAY_AUTH_TOKEN", "FUSION_STORE__DB", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def _differences(given, back, path: str = ""):
    """Paths where the client's round trip lost or changed a value: a field it does not know, or a wrong type."""
    if isinstance(given, dict) and isinstance(back, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key in back:
                yield from _differences(value, back[key], where)
            else:
                yield where
    elif isinstance(given, list) and isinstance(back, list) and len(given) == len(back):
        for i, (a, b) in enumerate(zip(given, back)):
            yield from _differences(a, b, f"{path}[{i}]")
    elif type(given) is not type(back) or given != back:
        yield path or "(value)"


def kubernetes_errors(type_name: str, instance) -> list[str]:
    """Why ``instance`` is not a valid ``type_name`` (e.g. V1PodTemplateSpec) for the Kubernetes client.

    The client ignores unknown keys, so the value must also serialise back unchanged."""
    try:
        model = API.deserialize(json.dumps(instance), type_name, "application/json")
    except ValueError as err:  # the models' pydantic ValidationError is a ValueError
        return [f"not a {type_name}: {err}"]
    return [f"{type_name} has no field {p!r} of this type"
            for p in _differences(instance, API.sanitize_for_serialization(model))]


def _kubernetes_type(validator, type_name, instance, schema):
    for message in kubernetes_errors(type_name, instance):
        yield jsonschema.ValidationError(message)


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-kubernetes-type": _kubernetes_type})


def errors(manifest: dict) -> list[str]:
    found = Validator(SCHEMA).iter_errors(manifest)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found)


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]


def pod_templates(manifest: dict) -> dict[str, dict]:
    spec = cluster_spec(manifest)
    templates = {"head": spec["headGroupSpec"]["template"]}
    templates.update({f"worker group {g['groupName']}": g["template"] for g in spec["workerGroupSpecs"]})
    if manifest["kind"] == "RayJob":
        templates["submitter"] = manifest["spec"]["submitterPodTemplate"]
    return templates


def test_the_schema_is_a_valid_json_schema():
    Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_manifests_validate(name):
    assert errors(load(name)) == []


@pytest.mark.parametrize("name, expected", [
    ("raycluster.yaml", {"head", "worker group cpu", "worker group gpu"}),
    ("rayjob-nightly.yaml", {"head", "worker group cpu", "worker group gpu", "submitter"}),
])
def test_every_pod_template_is_a_kubernetes_pod_template(name, expected):
    templates = pod_templates(load(name))
    assert set(templates) == expected
    for where, template in templates.items():
        assert kubernetes_errors("V1PodTemplateSpec", template) == [], where
        pod = API.deserialize(json.dumps(template), "V1PodTemplateSpec", "application/json")
        assert pod.spec.security_context.run_as_non_root is True, where
        assert pod.spec.containers[0].image.startswith("registry.example.com/fusion:"), where


def _set(path: str, value):
    """A mutation that sets the value at a dotted path (list indexes as numbers); REMOVE deletes it."""
    def mutate(doc):
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parents:
            doc = doc[part]
        if value is REMOVE:
            del doc[leaf]
        else:
            doc[leaf] = value
    return mutate


def _rename(path: str, new: str):
    def mutate(doc):
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parents:
            doc = doc[part]
        doc[new] = doc.pop(leaf)
    return mutate


REMOVE = object()
CONTAINER = "spec.headGroupSpec.template.spec.containers.0"
JOB_WORKER = "spec.rayClusterSpec.workerGroupSpecs.1"


@pytest.mark.parametrize("name, mutate, expected", [
    ("raycluster.yaml", _set("apiVersion", "ray.io/v1alpha1"), "'ray.io/v1' was expected"),
    ("raycluster.yaml", _rename("spec.workerGroupSpecs.0.maxReplicas", "maxReplica"), "'maxReplica' was unexpected"),
    ("raycluster.yaml", _rename("spec.headGroupSpec.rayStartParams", "rayStartParam"), "'rayStartParam' was unexpected"),
    ("raycluster.yaml", _rename("spec.enableInTreeAutoscaling", "enableInTreeAutoScaling"), "was unexpected"),
    ("raycluster.yaml", _set("spec.enableInTreeAutoscaling", "true"), "'true' is not of type 'boolean'"),
    ("raycluster.yaml", _set("spec.headGroupSpec.rayStartParams.num-cpus", 0), "0 is not of type 'string'"),
    ("raycluster.yaml", _set("spec.workerGroupSpecs.1.maxReplicas", 2 ** 31), "is greater than the maximum"),
    ("raycluster.yaml", _set("spec.workerGroupSpecs.0.groupName", REMOVE), "'groupName' is a required property"),
    ("raycluster.yaml", _set("spec.autoscalerOptions.upscalingMode", "Fast"), "'Fast' is not one of"),
    ("raycluster.yaml", _rename("metadata.labels", "lables"), "V1ObjectMeta has no field 'lables'"),
    ("raycluster.yaml", _rename(f"{CONTAINER}.imagePullPolicy", "imagePullPolicyy"),
     "V1PodTemplateSpec has no field 'spec.containers[0].imagePullPolicyy'"),
    ("raycluster.yaml", _set(f"{CONTAINER}.ports.0.containerPort", "6379"), "not a V1PodTemplateSpec"),
    ("raycluster.yaml", _rename(f"{CONTAINER}.env.1.valueFrom.secretKeyRef", "secretKeyref"),
     "no field 'spec.containers[0].env[1].valueFrom.secretKeyref'"),
    ("raycluster.yaml", _set(f"{CONTAINER}.name", REMOVE), "not a V1PodTemplateSpec"),
    ("raycluster.yaml", _rename("spec.autoscalerOptions.env.1.valueFrom", "valuefrom"), "V1EnvVar has no field"),
    ("rayjob-nightly.yaml", _rename("spec.shutdownAfterJobFinishes", "shutdownAfterJobFinish"), "was unexpected"),
    ("rayjob-nightly.yaml", _set("spec.ttlSecondsAfterFinished", "3600"), "'3600' is not of type 'integer'"),
    ("rayjob-nightly.yaml", _set("spec.submissionMode", "K8sMode"), "'K8sMode' is not one of"),
    ("rayjob-nightly.yaml", _rename(f"{JOB_WORKER}.template.spec.tolerations", "toleration"),
     "no field 'spec.toleration'"),
    ("rayjob-nightly.yaml", _rename("spec.submitterPodTemplate.spec.restartPolicy", "restartpolicy"),
     "no field 'spec.restartpolicy'"),
])
def test_a_typo_fails_validation(name, mutate, expected):
    manifest = copy.deepcopy(load(name))
    mutate(manifest)
    found = errors(manifest)
    assert any(expected in e for e in found), found


def _containers(manifest: dict) -> dict[str, list[dict]]:
    """The env of every container that talks to Ray: pods' containers and the autoscaler sidecar."""
    envs = {f"{where} {c['name']}": c.get("env", []) for where, template in pod_templates(manifest).items()
            for c in template["spec"]["containers"]}
    envs["autoscaler"] = cluster_spec(manifest)["autoscalerOptions"]["env"]
    return envs


@pytest.mark.parametrize("name", MANIFESTS)
def test_secrets_come_from_kubernetes_secrets_and_settings_exist(name):
    manifest = load(name)
    for where, env in _containers(manifest).items():
        by_name = {e["name"]: e for e in env}
        assert len(by_name) == len(env), f"{where}: a variable set twice"
        assert by_name["RAY_AUTH_MODE"].get("value") == "token", where
        for var in SECRET_ENV & set(by_name):
            assert "value" not in by_name[var] and by_name[var]["valueFrom"]["secretKeyRef"]["name"], (where, var)
        for var in by_name:
            if var.startswith("FUSION_"):
                section, _, key = var.removeprefix("FUSION_").lower().partition("__")
                model = Settings.model_fields[section].annotation
                assert key in model.model_fields, f"{where}: {var} is not a Fusion setting"
    for where, template in pod_templates(manifest).items():
        pod = template["spec"]
        assert "volumes" not in pod and all("volumeMounts" not in c for c in pod["containers"]), where
        if where != "submitter":
            env = {e["name"]: e for e in pod["containers"][0]["env"]}
            assert SECRET_ENV <= set(env), where
            assert env["FUSION_STORE__ROOT"]["value"].startswith("s3://"), where
        else:
            assert {e["name"] for e in pod["containers"][0]["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


def test_the_cluster_autoscales_a_cpu_and_a_gpu_group():
    spec = load("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    cluster_profile = yaml.safe_load(resolve_profile("cluster").read_text())
    assert groups["gpu"]["maxReplicas"] >= cluster_profile["train"]["num_workers"]


def test_the_nightly_job_runs_on_the_same_cluster_spec():
    assert load("rayjob-nightly.yaml")["spec"]["rayClusterSpec"] == load("raycluster.yaml")["spec"]


def _parse_fusion(command: str) -> dict:
    """The parameters `fusion run` gets from ``command``; the CLI's parser refuses unknown options."""
    from typer.main import get_command

    from flows.cli import app

    args = shlex.split(command)
    assert args[:2] == ["fusion", "run"]
    run = get_command(app).commands["run"]
    return run.make_context("run", args[2:]).params


def test_the_nightly_entrypoint_is_a_fusion_command():
    spec = load("rayjob-nightly.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    params = _parse_fusion(spec["entrypoint"])
    assert params["flow"] == "nightly"
    assert params["source"].startswith("s3://")
    assert resolve_profile(params["config"]).name == "cluster.yaml"
    with pytest.raises(Exception, match="No such option: --sorce"):
        _parse_fusion(spec["entrypoint"].replace("--source", "--sorce"))
