"""The AWS cluster-launcher config and the KubeRay manifests: they parse, use only fields,
images and resources that exist, run commands the CLI accepts, and expose nothing.

Field names are checked against KubeRay's ray.io/v1 API reference (docs/reference/api.md
of ray-project/kuberay, plus `authOptions`, added in KubeRay 1.5.1); the AWS config goes
through Ray's own `prepare_config` + `validate_config` (its JSON schema), as `ray up` does.
"""
from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
KUBERAY = CLUSTER / "kuberay"
RAY_VERSION = "2.60.0"
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
BASE_IMAGE = f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"
IMAGE = "CHANGE-ME.dkr.ecr.us-west-2.amazonaws.com/cycledrums:0.1.0"  # built from cluster/Dockerfile
JOBS = ("prepare", "train", "generate", "score")
ROOT = CLUSTER.parent

# KubeRay ray.io/v1 fields (verified against the API reference).
RAY_CLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
                    "rayVersion", "workerGroupSpecs", "authOptions"}
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas",
                     "idleTimeoutSeconds", "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "securityContext",
                      "idleTimeoutSeconds", "upscalingMode", "version", "env", "envFrom", "volumeMounts"}
AUTH_OPTIONS = {"mode"}
RAY_JOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
                "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
                "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
                "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
                "shutdownAfterJobFinishes", "suspend", "schedule"}
# The core Kubernetes fields these manifests use (PodSpec / Container subsets).
POD_SPEC = {"serviceAccountName", "containers", "volumes", "tolerations", "nodeSelector", "affinity"}
CONTAINER = {"name", "image", "resources", "ports", "volumeMounts", "env", "lifecycle"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


def cluster_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def unknown_fields(doc: dict) -> list[str]:
    """Every field of a RayCluster / RayJob (down to the containers) that the API lacks."""
    bad = []

    def check(where: str, mapping: dict, allowed: set) -> None:
        bad.extend(f"{where}.{key}" for key in mapping if key not in allowed)

    if doc["kind"] == "RayJob":
        check("spec", doc["spec"], RAY_JOB_SPEC)
    for spec in cluster_specs(doc):
        check("rayClusterSpec", spec, RAY_CLUSTER_SPEC)
        check("authOptions", spec.get("authOptions", {}), AUTH_OPTIONS)
        check("autoscalerOptions", spec.get("autoscalerOptions", {}), AUTOSCALER_OPTIONS)
        check("headGroupSpec", spec["headGroupSpec"], HEAD_GROUP_SPEC)
        groups = [("headGroupSpec", spec["headGroupSpec"])]
        for group in spec.get("workerGroupSpecs", []):
            check(f"workerGroupSpecs[{group.get('groupName')}]", group, WORKER_GROUP_SPEC)
            groups.append((group.get("groupName"), group))
        for name, group in groups:
            pod = group["template"]["spec"]
            check(f"{name}.template.spec", pod, POD_SPEC)
            for container in pod["containers"]:
                check(f"{name}.containers[{container.get('name')}]", container, CONTAINER)
    return bad


def containers(spec: dict):
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [(g.get("groupName", "head"), g, c)
            for g in groups for c in g["template"]["spec"]["containers"]]


# ------------------------------------------------------------------ KubeRay


def test_kuberay_manifests_parse_with_the_expected_kinds():
    docs = kuberay_docs()
    kinds = [(name, d["kind"]) for name, d in docs]
    assert ("raycluster.yaml", "RayCluster") in kinds
    assert ("serviceaccount.yaml", "ServiceAccount") in kinds
    for job in JOBS:
        assert (f"rayjob-{job}.yaml", "RayJob") in kinds
    for name, d in docs:
        if d["kind"] in ("RayCluster", "RayJob"):
            assert d["apiVersion"] == "ray.io/v1", name
        else:
            assert d["kind"] == "ServiceAccount" and d["apiVersion"] == "v1", name


def test_kuberay_manifests_use_only_fields_kuberay_has():
    for name, doc in kuberay_docs():
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert unknown_fields(doc) == [], name


def test_the_field_check_catches_a_misspelt_field():
    doc = next(d for _, d in kuberay_docs() if d["kind"] == "RayJob")
    broken = copy.deepcopy(doc)
    broken["spec"]["runtimeEnvYaml"] = broken["spec"].pop("runtimeEnvYAML")
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert unknown_fields(broken) == ["spec.runtimeEnvYaml", "workerGroupSpecs[gpu].maxReplica"]


def test_ray_version_images_and_gpu_limits():
    import ray

    assert ray.__version__ == RAY_VERSION
    gpu_groups = 0
    for name, doc in kuberay_docs():
        for spec in cluster_specs(doc):
            assert spec["rayVersion"] == RAY_VERSION, name
            assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", name
            for group, spec_group, c in containers(spec):
                assert c["image"] == IMAGE, (name, group, c["image"])  # every pod: the project's image
                limits, requests = c["resources"]["limits"], c["resources"]["requests"]
                gpus = limits.get("nvidia.com/gpu")
                if group.startswith("gpu"):
                    gpu_groups += 1
                    assert gpus == "1" and requests.get("nvidia.com/gpu") == gpus, (name, group)
                else:
                    assert gpus is None and "nvidia.com/gpu" not in requests, (name, group)
                assert {"cpu", "memory"} <= set(limits), (name, group)
            for group in spec.get("workerGroupSpecs", []):
                assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    assert gpu_groups >= 5  # the RayCluster and every RayJob can get GPUs


def test_nothing_is_exposed_and_no_credentials_are_in_the_repo():
    for name, doc in kuberay_docs():
        for spec in cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
            assert not head.get("enableIngress"), name
            assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
            assert spec["authOptions"]["mode"] == "token", name
            for _, group, c in containers(spec):
                assert group["template"]["spec"]["serviceAccountName"] == "cycledrums-ray", name
                assert not any("AWS_" in e.get("name", "") for e in c.get("env", [])), name
    for path in CLUSTER.rglob("*"):
        if path.suffix in (".yaml", ".yml", ".md", ".py"):
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert "kind: Secret" not in text and "secretKeyRef" not in text, path
            assert not re.search(r"aws_secret_access_key\s*[:=]\s*\S", text, re.I), path
            assert "LoadBalancer" not in text.replace("no LoadBalancer", ""), path


def test_rayjobs_run_the_cli_from_the_image_with_the_gpu_options():
    from cluster.submit import validate_job_args
    from cycledrums_cli import build_parser

    for job in JOBS:
        doc = _docs(KUBERAY / f"rayjob-{job}.yaml")[0]
        spec = doc["spec"]
        argv = shlex.split(spec["entrypoint"])
        assert argv[:2] == ["cycledrums", job]
        validate_job_args(job, argv[2:])  # the CLI of this checkout accepts them
        args = build_parser().parse_args(argv[1:])
        assert args.device == "cuda", job  # the GPU group scales from 0 only if the job asks
        gpu_group = next(g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
        if job == "train":
            assert args.num_workers <= gpu_group["maxReplicas"]
        else:  # the model actors' autoscaling range fits the GPU group
            assert args.actors[1] <= gpu_group["maxReplicas"] / args.gpus_per_actor, job
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"]) or {}
        assert not {"pip", "uv", "conda", "working_dir"} & set(runtime_env), job  # all in the image
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode")


def test_service_account_uses_irsa():
    doc = _docs(KUBERAY / "serviceaccount.yaml")[0]
    assert doc["metadata"]["name"] == "cycledrums-ray"
    assert doc["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


# ------------------------------------------------------------------ AWS cluster launcher


def _aws_config() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def test_aws_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_aws_config()))
    broken = _aws_config()
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # misspelt
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_aws_cluster_shape():
    config = _aws_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu, cpu = types["gpu_worker"], types["cpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert not cpu["node_config"]["InstanceType"].startswith(("g", "p"))
    for worker in (gpu, cpu):
        assert 0 == worker["min_workers"] < worker["max_workers"] <= config["max_workers"]
        assert worker["node_config"]["IamInstanceProfile"]  # S3 through the instance role
    assert config["docker"]["image"] == IMAGE and "head_image" not in config["docker"]
    assert not any("docker" in t for t in types.values())  # every node: the project's image
    assert not any("pip" in c for c in config["setup_commands"] + config["worker_setup_commands"])


# ------------------------------------------------------------------ the image


def test_the_image_and_the_makefile_install_through_the_same_script():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(BASE_IMAGE)}$", dockerfile, re.M)
    assert re.search(r"^RUN cluster/install\.sh python \.", dockerfile, re.M)
    assert "ARG BAKE_WEIGHTS" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    install = makefile.split("$(VENV)/.installed:")[1].split("\n\n")[0]
    assert "cluster/install.sh $(BIN)/python -e '.[dev]'" in install
    assert "pip install" not in install  # no second install command that could drift
    script = (CLUSTER / "install.sh").read_text()
    assert '-m pip install --no-cache-dir -c constraints.txt "$@"' in script


def test_the_install_script_refuses_to_run_without_a_python():
    import subprocess

    done = subprocess.run(["sh", str(CLUSTER / "install.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: cluster/install.sh PYTHON" in done.stderr


def test_aws_dashboard_stays_on_the_head_and_only_ssh_is_open():
    config = _aws_config()
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert all(r.get("FromPort") == r.get("ToPort") == 22 for r in rules)
    text = (CLUSTER / "aws.yaml").read_text()
    for port in ("8265", "10001", "6379"):
        assert not re.search(rf"(FromPort|ToPort):\s*{port}", text)
