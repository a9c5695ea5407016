"""deploy/: the Prometheus config passes promtool and scrapes a real Triton through a real Prometheus; the
Grafana dashboard queries only series that the service and Triton export, in PromQL that Prometheus accepts;
the compose file wires the files that exist. (No Docker engine here: `docker compose config` is not run.)"""
from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import numpy as np
import pytest
import yaml

from swapstream.services.cli import build_parser, cmd_serve
from swapstream.services.jobs.metrics import ServiceMetrics
from tests.helpers.prometheus_server import DEPLOY, PROMETHEUS_CONFIG, find_binary, running_prometheus, scrape_config

COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "swapstream.json"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "swapstream.yml"
# Triton exports these only with a GPU (and --allow-gpu-metrics), so the CPU server here cannot show them.
TRITON_GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}
# Series that prometheus-client derives from a metric family of each type.
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
                   "histogram": ("_bucket", "_count", "_sum", "_created")}

_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_PROMQL_LABELS_AND_RANGES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_NAME = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, grouping or keywords)."""
    for pattern in (_PROMQL_STRING, _PROMQL_LABELS_AND_RANGES, _PROMQL_GROUPING):
        expr = pattern.sub(" ", expr)
    return {name for name in _PROMQL_NAME.findall(expr) if name.lower() not in _PROMQL_KEYWORDS}


def dashboard_expressions() -> list[str]:
    def walk(panels):
        for panel in panels:
            yield from (target["expr"] for target in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def for_prometheus(expr: str) -> str:
    """A dashboard expression with Grafana's interval variables replaced, as Grafana sends it."""
    return re.sub(r"\$__\w+", "1m", expr)


def service_metric_families() -> dict[str, str]:
    return {family.name: family.type for family in ServiceMetrics(lambda: {}, lambda: 0).registry.collect()}


def service_series() -> set[str]:
    return {name + suffix for name, kind in service_metric_families().items() for suffix in SAMPLE_SUFFIXES[kind]}


def triton_metrics(triton) -> str:
    return urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()


def triton_series(triton) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", triton_metrics(triton), re.M))


def detect_successes(triton) -> float:
    line = re.search(r'^nv_inference_request_success\{model="detect",.*\} (\S+)$', triton_metrics(triton), re.M)
    return float(line.group(1))


def compose_command_option(service: dict, option: str) -> str:
    """The value of ``--option VALUE`` or ``--option=VALUE`` in a compose service's command."""
    command = service["command"]
    for i, word in enumerate(command):
        if word == option:
            return command[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{option} not in {command}")


def test_metric_names_reads_promql():
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{stage="x y"}[5m]))) '
            '/ on (stage) group_left b_total offset 1m > bool 0 or c:recorded')
    assert metric_names(expr) == {"a_bucket", "b_total", "c:recorded"}


def test_prometheus_configs_pass_promtool(tmp_path):
    generated = tmp_path / "prometheus.yml"
    generated.write_text(yaml.safe_dump(scrape_config({"swapstream": "127.0.0.1:1", "triton": "127.0.0.1:2"})))
    for config in (PROMETHEUS_CONFIG, generated):
        check = subprocess.run([find_binary("promtool"), "check", "config", str(config)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_the_compose_services_on_their_ports():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    jobs = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
            for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert jobs == {
        "swapstream": [f"swapstream:{compose_command_option(services['swapstream'], '--port')}"],
        "triton": [f"triton:{compose_command_option(services['triton'], '--metrics-port')}"],
    }


def test_compose_runs_swapstream_serve_with_options_the_cli_accepts():
    service = yaml.safe_load(COMPOSE.read_text())["services"]["swapstream"]
    args = build_parser().parse_args(service["command"])
    assert (args.func, args.host, args.port, args.triton, args.data) == (
        cmd_serve, "0.0.0.0", 8080, "triton:8001", "/data")
    assert "swapstream-data:/data" in service["volumes"]


def test_compose_wires_the_deploy_files():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"triton", "swapstream", "prometheus", "grafana"}
    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts[source] = (name, target)
    repository = mounts.pop("./model_repository")  # built by `swapstream repository` before `compose up`
    assert repository == ("triton", compose_command_option(services["triton"], "--model-repository"))
    for source in mounts:
        assert (DEPLOY / source).exists(), f"{COMPOSE.name} mounts {source}, which does not exist"
    assert mounts["./prometheus.yml"] == ("prometheus", "/etc/prometheus/prometheus.yml")

    build = services["swapstream"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert services["swapstream"]["environment"]["SWAPSTREAM_TOKEN"].startswith("${SWAPSTREAM_TOKEN")
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"

    datasource = yaml.safe_load(GRAFANA_DATASOURCE.read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    provider_path = yaml.safe_load(GRAFANA_DASHBOARDS.read_text())["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == ("grafana", provider_path)
    assert mounts["./grafana/provisioning"] == ("grafana", "/etc/grafana/provisioning")
    panel_sources = {t["datasource"]["uid"] for t in json.loads(DASHBOARD.read_text())["panels"]
                     if "datasource" in t}
    assert panel_sources == {datasource["uid"]}


def test_dashboard_queries_only_exported_series_and_shows_every_service_metric(triton):
    used = set().union(*map(metric_names, dashboard_expressions()))
    unknown = used - service_series() - triton_series(triton) - TRITON_GPU_METRICS
    assert not unknown, f"the dashboard queries series nobody exports: {sorted(unknown)}"
    missing = {family for family in service_metric_families() if not any(n.startswith(family) for n in used)}
    assert not missing, f"service metrics without a dashboard panel: {sorted(missing)}"
    assert {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_queue_duration_us",
            "nv_inference_compute_infer_duration_us", "nv_inference_exec_count", "nv_gpu_utilization"} <= used


@pytest.fixture(scope="module")
def prometheus(triton):
    host_port = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    with running_prometheus(triton=host_port) as server:
        server.wait_for_target("triton")
        yield server


def test_prometheus_scrapes_triton_request_counts(prometheus, triton, client):
    [target] = prometheus.targets()
    assert (target["labels"]["job"], target["scrapeUrl"]) == ("triton", triton.metrics_url)
    before = detect_successes(triton)
    client.detect(np.zeros((1, 64, 64, 3), np.uint8))
    [series] = prometheus.wait_for(f'nv_inference_request_success{{model="detect"}} > {before}')
    assert series["metric"]["job"] == "triton" and float(series["value"][1]) > before

    success_panel = "sum by (model) (rate(nv_inference_request_success"
    rate_panel = next(e for e in dashboard_expressions() if e.startswith(success_panel))
    rates = prometheus.wait_for(f"({for_prometheus(rate_panel)}) > 0")
    assert "detect" in {r["metric"]["model"] for r in rates}


def test_prometheus_accepts_every_dashboard_expression(prometheus):
    prometheus.wait_for("rate(nv_inference_exec_count[1m])")  # two scrapes: rates have values
    results = {expr: prometheus.query(for_prometheus(expr)) for expr in dashboard_expressions()}
    triton_panels = [e for e in results if "nv_inference" in e]
    assert triton_panels and all(results[e] for e in triton_panels), \
        f"Triton panels without data: {[e for e in triton_panels if not results[e]]}"
