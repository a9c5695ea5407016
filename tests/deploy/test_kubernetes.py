"""deploy/kubernetes: the base and both overlays render (tests/helpers/kustomize.py, and the same as `kubectl
kustomize` where it is installed), every object validates strictly against Kubernetes 1.33 (kubernetes-validate,
offline), what the objects name exists, the commands parse with the CLI, and the autoscalers' metrics come from
adapter rules over series that Triton and the service export, in PromQL that promtool accepts."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from swapstream.services.cli import build_parser, cmd_repository, cmd_serve, cmd_triton
from swapstream.services.jobs.metrics import ServiceMetrics
from tests.helpers.kustomize import render
from tests.helpers.prometheus_server import find_binary

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VARIANTS = ("base", "gpu", "cpu")
KUBERNETES_VERSION = "1.33.0"
# Created by the operator (README, "Running on Kubernetes"), never committed: the keys the pods read.
OPERATOR_SECRET = ("swapstream", {"token", "postgres-password", "store-url"})
ADAPTER_RULES = KUBERNETES / "base" / "adapter-rules.yaml"


def objects(variant: str) -> list[dict]:
    return render(KUBERNETES / variant)


def find(objs: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict, name: str) -> dict:
    [found] = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return found


def key(obj: dict) -> tuple:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_strictly_against_kubernetes_1_33(variant):
    objs = objects(variant)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "Ingress", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
            "ConfigMap", "APIService", "PodDisruptionBudget"} <= kinds
    for obj in objs:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The check is strict: a field Kubernetes does not know fails it (the retired v2beta2 autoscaler too).
    wrong = copy.deepcopy(find(objs, "Deployment", "triton"))
    pod_spec(wrong)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)
    old = copy.deepcopy(find(objs, "HorizontalPodAutoscaler", "triton")) | {"apiVersion": "autoscaling/v2beta2"}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(old, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_renderer_gives_what_kubectl_kustomize_gives(variant):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed (not in Debian); the renderer alone is used")
    printed = subprocess.run([kubectl, "kustomize", str(KUBERNETES / variant)], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    theirs = sorted((d for d in yaml.safe_load_all(printed.stdout) if d), key=key)
    assert sorted(objects(variant), key=key) == theirs


@pytest.mark.parametrize("variant", VARIANTS)
def test_what_the_objects_name_exists(variant):
    objs = objects(variant)
    names = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    for obj in objs:
        namespace = obj["metadata"].get("namespace")
        template = obj["spec"]["template"] if obj["kind"] in ("Deployment", "StatefulSet") else None
        if template:
            spec = template["spec"]
            claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    assert ("ConfigMap", namespace, volume["configMap"]["name"]) in names, volume
                if "persistentVolumeClaim" in volume:
                    assert ("PersistentVolumeClaim", namespace, volume["persistentVolumeClaim"]["claimName"]) in names
            mounted = {v["name"] for v in spec.get("volumes", [])} | claims
            for c in spec["containers"] + spec.get("initContainers", []):
                assert {m["name"] for m in c.get("volumeMounts", [])} <= mounted, c["name"]
                for env in c.get("env", []):
                    secret = env.get("valueFrom", {}).get("secretKeyRef")
                    if secret:
                        assert (secret["name"], secret["key"]) in {(OPERATOR_SECRET[0], k) for k in OPERATOR_SECRET[1]}
                ports = {p["name"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    assert port is None or port in ports, f"{c['name']} {probe} port {port}"
            if "serviceAccountName" in spec:
                assert ("ServiceAccount", namespace, spec["serviceAccountName"]) in names
        if obj["kind"] == "Service":
            pods = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["namespace"] ==
                    namespace and obj["spec"]["selector"].items() <= o["spec"]["template"]["metadata"]["labels"].items()]
            assert len(pods) == 1, f"Service {obj['metadata']['name']} selects {len(pods)} workloads"
            container_ports = {p["name"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in obj["spec"]["ports"]} <= container_ports
        if obj["kind"] == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            assert (target["kind"], namespace, target["name"]) in names
        if obj["kind"] == "Ingress":
            for rule in obj["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    service = find(objs, "Service", path["backend"]["service"]["name"])
                    assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        if obj["kind"] == "APIService":
            ref = obj["spec"]["service"]
            service = find(objs, "Service", ref["name"])
            assert service["metadata"]["namespace"] == ref["namespace"]
            assert ref["port"] in {p["port"] for p in service["spec"]["ports"]}
        for subject in obj.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and subject["namespace"] != "kube-system":
                assert ("ServiceAccount", subject["namespace"], subject["name"]) in names


def _args(words: list[str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", "postgresql://swapstream@postgres:5432/swapstream", w) for w in words]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_commands_are_ones_the_cli_accepts(variant):
    objs = objects(variant)
    service = container(find(objs, "Deployment", "swapstream"), "swapstream")
    args = build_parser().parse_args(_args(service["args"]))
    assert (args.func, args.host, args.port, args.data) == (cmd_serve, "0.0.0.0", 8080, "/data")
    assert args.store.startswith("postgresql://") and args.triton == "triton.swapstream.svc.cluster.local:8001"
    assert args.device == ("gpu" if variant == "gpu" else "cpu")
    # The grace period covers the preStop pause, the drain and the shutdown after it (the kubelet kills at its end).
    spec = pod_spec(find(objs, "Deployment", "swapstream"))
    pause = service["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert args.drain_timeout >= 30 and spec["terminationGracePeriodSeconds"] >= pause + args.drain_timeout + 15
    triton = find(objs, "Deployment", "triton")
    server = container(triton, "triton")
    if variant == "cpu":
        triton_args = build_parser().parse_args(server["command"][1:])
        assert (triton_args.func, triton_args.address, triton_args.grpc_port, triton_args.metrics_port) == (
            cmd_triton, "0.0.0.0", 8001, 8002)
        assert "initContainers" not in pod_spec(triton)
    else:
        [init] = pod_spec(triton)["initContainers"]
        assert build_parser().parse_args(init["command"][1:]).func is cmd_repository
        assert f"--model-repository={init['command'][2]}" in server["command"]
        assert ("nvidia.com/gpu" in server["resources"]["limits"]) == (variant == "gpu")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert triton["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert ports["grpc"] == 8001 and find(objs, "Service", "triton")["spec"]["clusterIP"] == "None"


def _adapter_metrics() -> tuple[dict[str, dict], dict[str, dict]]:
    rules = yaml.safe_load(ADAPTER_RULES.read_text())
    named = lambda group: {r["name"]["as"]: r for r in rules[group]}  # noqa: E731
    return named("rules"), named("externalRules")


def _series(rule: dict) -> str:
    return re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)


def test_the_autoscalers_scale_on_metrics_the_adapter_makes_from_exported_series(triton):
    pods_rules, external_rules = _adapter_metrics()
    objs = objects("base")
    for name, wanted in (("triton", {"triton_queue_us_per_request"}),
                         ("swapstream", {"swapstream_queued_jobs", "swapstream_live_streams"})):
        hpa = find(objs, "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        used = set()
        for metric in hpa["spec"]["metrics"]:
            source = metric[metric["type"].lower()]
            rules = pods_rules if metric["type"] == "Pods" else external_rules
            assert source["metric"]["name"] in rules, f"no adapter rule makes {source['metric']['name']}"
            used.add(source["metric"]["name"])
        assert used == wanted
    exported = set(re.findall(r"^# TYPE (\S+) ", urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode(),
                              re.M))
    exported |= {f.name for f in ServiceMetrics(lambda: {}, lambda: 0).registry.collect()}
    for rule in [*pods_rules.values(), *external_rules.values()]:
        queried = set(re.findall(r"\b(nv_\w+|swapstream_\w+)\{", rule["metricsQuery"])) | {_series(rule)}
        assert queried <= exported, f"the adapter queries series nobody exports: {queried - exported}"


def test_the_adapter_queries_and_the_kubernetes_prometheus_config_pass_promtool(tmp_path):
    promtool = find_binary("promtool")
    pods_rules, external_rules = _adapter_metrics()
    recorded = []
    for name, rule in {**pods_rules, **external_rules}.items():
        # What the adapter sends for one pod (or the namespace): its template filled in.
        expr = (rule["metricsQuery"].replace("<<.GroupBy>>", "namespace, pod")
                .replace("<<.LabelMatchers>>", 'namespace="swapstream",pod=~"a|b"')
                .replace("<<.Series>>", _series(rule)))
        recorded.append({"record": f"adapter:{name}", "expr": expr})
    rules_file = tmp_path / "adapter.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": recorded}]}))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest (the relabelling)
    # with the discovery swapped for a static target.
    config = yaml.safe_load((KUBERNETES / "base" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    check = subprocess.run([promtool, "check", "config", str(config_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
