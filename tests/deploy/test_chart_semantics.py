"""What an SRE relies on in the rendered chart, checked over every scenario."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from chart_scenarios import per_scenario
from recfleet_runtime.settings import env_names

# values key -> (object name, kind of traffic, settings class read by its entrypoint)
COMPONENTS = {
    "gateway": ("gateway", "http"),
    "candidateGen": ("candidate-gen", "grpc"),
    "ranking": ("ranking", "grpc"),
    "featureStore": ("feature-store", "grpc"),
    "eventIngest": ("event-ingest", "grpc"),
    "ingestSink": ("ingest-sink", "consumer"),
    "ingestRealtime": ("ingest-realtime", "consumer"),
}
SETTINGS_BY_ENTRYPOINT = {
    "recfleet_gateway": "recfleet_gateway.settings:GatewaySettings",
    "recfleet_candidates": "recfleet_candidates.settings:CandidateSettings",
    "recfleet_ranking": "recfleet_ranking.settings:RankingSettings",
    "recfleet_features": "recfleet_features.settings:FeatureSettings",
    "recfleet_ingest": "recfleet_ingest.settings:IngestSettings",
    "recfleet_ingest.sink": "recfleet_ingest.settings:IngestSettings",
    "recfleet_ingest.realtime": "recfleet_ingest.settings:IngestSettings",
    "recfleet-jobs": "recfleet_jobs.settings:JobSettings",
}
SECRETS = {"RECFLEET_POSTGRES_DSN", "RECFLEET_REDIS_URL", "RECFLEET_BOOTSTRAP_ADMIN_KEY", "RECFLEET_ERASURE_HASH_KEY"}

VERSION_LABELS = {"app.kubernetes.io/version", "helm.sh/chart", "app.kubernetes.io/managed-by"}
TRACK = "recfleet.io/track"


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def names(objects, kind):
    return {o["metadata"]["name"] for o in objects if o["kind"] == kind}


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "CronJob", "Job", "Pod")]


def expected_workload_names(values, key, track):
    name = f"recfleet-{COMPONENTS[key][0]}" + ("-canary" if track == "canary" else "")
    if key == "candidateGen":
        return [f"{name}-s{shard}" for shard in range(values["candidateGen"]["shards"]["count"])]
    return [name]


def settings_class(container):
    command = container["command"]
    entry = command[2] if command[:2] == ["python", "-m"] else command[0]
    module, cls = SETTINGS_BY_ENTRYPOINT[entry].split(":")
    return getattr(importlib.import_module(module), cls)


def config_maps(objects):
    return {o["metadata"]["name"]: o.get("data") or {} for o in objects if o["kind"] == "ConfigMap"}


def container_env(objects, container):
    """Every variable a container gets: its env list and the keys of its envFrom ConfigMaps."""
    cms = config_maps(objects)
    env = {e["name"]: e for e in container.get("env", [])}
    from_maps = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in cms, f"envFrom references missing ConfigMap {ref}"
        from_maps.update(cms[ref])
    return env, from_maps


@per_scenario
def test_every_enabled_component_has_its_objects(rendered, merged_values, scenario):
    objects, values = rendered[scenario], merged_values[scenario]
    for key, (name, _traffic) in COMPONENTS.items():
        v = values[key]
        if not v["enabled"]:
            continue
        tracks = ["stable", "canary"] if v["canary"]["enabled"] else ["stable"]
        kind = "StatefulSet" if key == "candidateGen" else "Deployment"
        for track in tracks:
            for workload in expected_workload_names(values, key, track):
                assert workload in names(objects, kind), f"{scenario}: {kind} {workload} missing"
                assert workload in names(objects, "Service"), f"{scenario}: Service {workload} missing"
                if track == "stable" and v["autoscaling"]["enabled"]:
                    assert workload in names(objects, "HorizontalPodAutoscaler")
                if track == "stable" and v["pdb"]["enabled"]:
                    assert workload in names(objects, "PodDisruptionBudget")
        assert f"recfleet-{name}" in names(objects, "ServiceAccount")
        if values["monitoring"]["enabled"] and v["serviceMonitor"]["enabled"]:
            assert f"recfleet-{name}" in names(objects, "ServiceMonitor")
        if values["networkPolicy"]["enabled"]:
            assert f"recfleet-{name}" in names(objects, "NetworkPolicy")


def test_production_has_hpa_pdb_servicemonitor_and_networkpolicy_for_every_service(rendered):
    objects = rendered["production"]
    for name, _ in COMPONENTS.values():
        for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert any(n == f"recfleet-{name}" or n.startswith(f"recfleet-{name}-s") for n in names(objects, kind)), (
                kind,
                name,
            )
        assert f"recfleet-{name}" in names(objects, "ServiceMonitor")
        assert f"recfleet-{name}" in names(objects, "NetworkPolicy")


def test_canary_objects_exist_only_when_enabled_and_carry_the_track(rendered):
    assert not [o for o in rendered["default"] if o["metadata"].get("labels", {}).get(TRACK) == "canary"]
    canary = [o for o in rendered["canaries-on"] if o["metadata"].get("labels", {}).get(TRACK) == "canary"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in canary}
    for key in COMPONENTS:
        for workload in expected_workload_names({"candidateGen": {"shards": {"count": 2}}}, key, "canary"):
            assert ("StatefulSet" if key == "candidateGen" else "Deployment", workload) in kinds
            assert ("Service", workload) in kinds
    for obj in canary:
        if obj["kind"] == "Service":
            assert obj["spec"]["selector"][TRACK] == "canary"


def test_canary_workload_runs_the_canary_image_and_overrides(rendered):
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered["canaries-on"]}
    ranking = objects[("Deployment", "recfleet-ranking-canary")]["spec"]["template"]["spec"]["containers"][0]
    assert ranking["image"] == "ghcr.io/recfleet/ranking:0.2.0-rc1"
    env = {e["name"]: e.get("value") for e in ranking["env"]}
    assert env["RECFLEET_TRACK"] == "canary"
    assert env["RECFLEET_RANKING_RANKER_VERSION"] == "ranker-2026-11-20"
    assert objects[("Deployment", "recfleet-ranking-canary")]["spec"]["replicas"] == 2
    stable = objects[("Deployment", "recfleet-ranking")]["spec"]["template"]["spec"]["containers"][0]
    assert stable["image"] == "ghcr.io/recfleet/ranking:0.1.0"
    assert {e["name"]: e.get("value") for e in stable["env"]}["RECFLEET_TRACK"] == "stable"


@per_scenario
def test_routing_configmap_carries_the_weights_and_the_gateway_reads_it(rendered, merged_values, scenario):
    objects, values = rendered[scenario], merged_values[scenario]
    routing = json.loads(config_maps(objects)["recfleet-routing"]["routing.json"])
    for key in ("candidateGen", "ranking", "featureStore", "eventIngest"):
        canary = values[key]["canary"]
        assert routing["services"][COMPONENTS[key][0]] == {
            "canary": canary["enabled"],
            "weight": canary["weight"] if canary["enabled"] else 0,
            "shadow_percent": canary["shadowPercent"] if canary["enabled"] else 0,
        }
    gateway = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "recfleet-gateway")
    pod = gateway["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "recfleet-routing")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    _, env = container_env(objects, pod["containers"][0])
    assert env["RECFLEET_GATEWAY_ROUTING_FILE"] == mount["mountPath"] + "/routing.json"


def test_gateway_targets_name_existing_services_in_shard_order(rendered):
    objects = rendered["canaries-on"]
    services = {o["metadata"]["name"]: o for o in by_kind(objects, "Service")}
    gateway = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "recfleet-gateway")
    _, env = container_env(objects, gateway["spec"]["template"]["spec"]["containers"][0])
    # Headless Services (every ready pod, balanced by the client), in dns:/// form.
    assert env["RECFLEET_GATEWAY_CANDIDATE_GEN_TARGETS"] == (
        "dns:///recfleet-candidate-gen-s0-headless:50051,dns:///recfleet-candidate-gen-s1-headless:50051"
    )
    assert env["RECFLEET_GATEWAY_CANDIDATE_GEN_CANARY_TARGETS"] == (
        "dns:///recfleet-candidate-gen-canary-s0-headless:50051,dns:///recfleet-candidate-gen-canary-s1-headless:50051"
    )
    assert json.loads(env["RECFLEET_GATEWAY_CANARY_WEIGHTS"]) == {
        "candidate-gen": 1,
        "event-ingest": 100,
        "feature-store": 50,
        "ranking": 10,
    }
    target_vars = [k for k in env if k.endswith(("_TARGET", "_TARGETS"))]
    assert len(target_vars) == 8
    for var in target_vars:
        for target in env[var].split(","):
            assert target.startswith("dns:///"), (var, target)
            host, port = target.removeprefix("dns:///").split(":")
            assert services[host]["spec"]["clusterIP"] == "None", (var, target)
            assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], (var, target)


def test_shards_4x2_renders_four_statefulsets_of_two_with_explicit_shards(rendered):
    objects = rendered["shards-4x2"]
    sets = sorted(by_kind(objects, "StatefulSet"), key=lambda o: o["metadata"]["name"])
    assert [s["metadata"]["name"] for s in sets] == [f"recfleet-candidate-gen-s{i}" for i in range(4)]
    for shard, sts in enumerate(sets):
        assert sts["spec"]["replicas"] == 2
        assert sts["spec"]["serviceName"] == "recfleet-candidate-gen-headless"
        container = sts["spec"]["template"]["spec"]["containers"][0]
        env, from_maps = container_env(objects, container)
        assert env["RECFLEET_CANDIDATES_SHARD"]["value"] == str(shard)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert from_maps["RECFLEET_CANDIDATES_SHARD_COUNT"] == "4"
    jobs_env = config_maps(objects)["recfleet-jobs-env"]
    assert jobs_env["RECFLEET_JOBS_SHARD_COUNT"] == "4"
    headless = next(
        o for o in by_kind(objects, "Service") if o["metadata"]["name"] == "recfleet-candidate-gen-headless"
    )
    assert headless["spec"]["clusterIP"] == "None"


def _selectors(node, path=""):
    """(path, labels) of every label selector anywhere in an object."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if key in ("selector", "podSelector", "labelSelector", "namespaceSelector") and isinstance(value, dict):
                labels = value.get("matchLabels", value if key == "selector" and "matchLabels" not in value else {})
                yield here, labels
            yield from _selectors(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _selectors(value, f"{path}/{i}")


@per_scenario
def test_selectors_never_contain_the_version(rendered, scenario):
    found = 0
    for obj in rendered[scenario]:
        for path, labels in _selectors(obj):
            found += 1
            assert not VERSION_LABELS & set(labels or {}), f"{obj['kind']}/{obj['metadata']['name']}{path}: {labels}"
    assert found >= 10


@per_scenario
def test_every_container_runs_with_restricted_pod_security(rendered, kit, scenario):
    checked = 0
    for obj in workloads(rendered[scenario]):
        pod = kit.pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        restricted_types = {
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        }
        assert all(set(v) - {"name"} <= restricted_types for v in pod["volumes"]), where
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"]), where
            assert "limits" in container["resources"] and "requests" in container["resources"], where
            checked += 1
    assert checked >= 7


def _pods(objects):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield obj["spec"]["template"]["metadata"]["labels"], obj["spec"]["template"]["spec"]


@per_scenario
def test_each_service_port_targets_a_container_port_of_the_pods_it_selects(rendered, scenario):
    objects = rendered[scenario]
    for svc in by_kind(objects, "Service"):
        selector = svc["spec"]["selector"]
        pods = [spec for labels, spec in _pods(objects) if selector.items() <= labels.items()]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            assert port["name"] in ("grpc", "http", "metrics")
            for spec in pods:
                ports = [p for c in spec["containers"] for p in c.get("ports", [])]
                target = port["targetPort"]
                match = [
                    p
                    for p in ports
                    if (p["name"] == target if isinstance(target, str) else p["containerPort"] == target)
                ]
                assert match, f"{svc['metadata']['name']}:{port['name']} -> {target} not a container port"
                assert match[0]["containerPort"] == port["port"]


@per_scenario
def test_no_workload_selects_another_workloads_pods(rendered, scenario):
    pods = [
        (
            o["kind"],
            o["metadata"]["name"],
            o["spec"]["selector"]["matchLabels"],
            o["spec"]["template"]["metadata"]["labels"],
        )
        for o in rendered[scenario]
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
    for kind, name, selector, labels in pods:
        assert selector.items() <= labels.items(), f"{kind}/{name} does not select its own pods"
        others = [f"{k}/{n}" for k, n, _, other in pods if n != name and selector.items() <= other.items()]
        assert others == [], f"{kind}/{name} also selects the pods of {others}"


def test_each_shard_service_selects_only_its_shard(rendered):
    objects = rendered["shards-4x2"]
    for shard in range(4):
        service = next(
            o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == f"recfleet-candidate-gen-s{shard}"
        )
        assert service["spec"]["selector"]["recfleet.io/shard"] == str(shard)


@per_scenario
def test_grpc_services_use_native_grpc_probes_and_a_startup_probe(rendered, scenario):
    for _, spec in _pods(rendered[scenario]):
        container = spec["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert "startupProbe" in container and "livenessProbe" in container
        if "grpc" in ports:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == ports["grpc"], (container["name"], probe)


@per_scenario
def test_env_vars_match_the_settings_classes_both_ways(rendered, scenario):
    objects = rendered[scenario]
    checked = set()
    for obj in workloads(objects):
        if obj["kind"] == "Pod":
            continue
        container = (
            obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
            if obj["kind"] == "CronJob"
            else obj["spec"]["template"]["spec"]["containers"][0]
        )
        if container["name"] == "migrate":
            # Runs before the ConfigMaps exist: the DSN from its Secret and nothing else.
            assert [e["name"] for e in container["env"]] == ["RECFLEET_POSTGRES_DSN"]
            assert "secretKeyRef" in container["env"][0]["valueFrom"]
            continue
        cls = settings_class(container)
        env, from_maps = container_env(objects, container)
        duplicated = set(env) & set(from_maps)
        set_by_chart = {n for n in set(env) | set(from_maps) if not n.startswith("OTEL_")}
        read = env_names(cls)
        where = f"{obj['kind']}/{obj['metadata']['name']} ({cls.__name__})"
        missing, unread = sorted(read - set_by_chart), sorted(set_by_chart - read)
        assert not missing, f"{where}: settings the chart does not set (add them to values.yaml): {missing}"
        assert not unread, f"{where}: variables the chart sets that nothing reads: {unread}"
        canary_overrides = {
            e["name"] for e in obj["spec"].get("template", {}).get("spec", {}).get("containers", [{}])[0].get("env", [])
        }
        assert duplicated <= canary_overrides, f"{where}: {duplicated} set twice"
        for secret in SECRETS & read:
            assert "secretKeyRef" in env[secret]["valueFrom"], f"{where}: {secret} must come from a Secret"
        checked.add(cls.__name__)
    if scenario == "default":
        assert checked == {
            "GatewaySettings",
            "CandidateSettings",
            "RankingSettings",
            "FeatureSettings",
            "IngestSettings",
            "JobSettings",
        }


@per_scenario
def test_otel_variables_appear_only_when_tracing_is_on(rendered, merged_values, scenario):
    otel = merged_values[scenario]["otel"]["enabled"]
    for obj in workloads(rendered[scenario]):
        if obj["kind"] == "Pod":
            continue
        spec = (
            obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            if obj["kind"] == "CronJob"
            else obj["spec"]["template"]["spec"]
        )
        if spec["containers"][0]["name"] == "migrate":
            continue
        names_ = {e["name"] for e in spec["containers"][0]["env"]}
        assert ("OTEL_EXPORTER_OTLP_ENDPOINT" in names_) == otel


REQUIRED_JOBS = {
    "train-als",
    "build-index",
    "train-ranker",
    "materialize",
    "popularity",
    "create-partitions",
    "evaluate",
}


def test_cronjobs_run_each_batch_job_once_at_a_time(rendered):
    cronjobs = by_kind(rendered["default"], "CronJob")
    commands = {}
    for cron in cronjobs:
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][0] == "recfleet-jobs"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/artifacts" in mounts
        commands[container["command"][1]] = cron
    assert set(commands) == REQUIRED_JOBS
    env = config_maps(rendered["default"])["recfleet-jobs-env"]
    assert env["RECFLEET_ARTIFACT_URL"] == "file:///artifacts"


def test_migrations_run_before_install_and_upgrade_and_sample_data_only_on_request(rendered, kit):
    migrate = next(o for o in rendered["default"] if o["kind"] == "Job" and o["metadata"]["name"] == "recfleet-migrate")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert migrate["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "jobs"
    assert not [o for o in rendered["default"] if o["metadata"]["name"] == "recfleet-load-movielens"]
    objects = kit.render({"sampleData": {"enabled": True}})
    load = next(o for o in objects if o["metadata"]["name"] == "recfleet-load-movielens")
    assert load["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert load["spec"]["template"]["spec"]["containers"][0]["command"] == ["recfleet-jobs", "load-movielens"]


def test_artifact_volume_is_read_only_for_the_services(rendered):
    for _, spec in _pods(rendered["default"]):
        for mount in spec["containers"][0]["volumeMounts"]:
            if mount["name"] == "artifacts":
                assert mount["readOnly"] is True


def test_network_policies_deny_by_default_and_allow_each_edge(rendered):
    policies = {o["metadata"]["name"]: o["spec"] for o in by_kind(rendered["default"], "NetworkPolicy")}
    deny = policies["recfleet-default-deny"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny

    def egress_components(name):
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policies[name]["egress"]
            for peer in rule.get("to", [])
            if "podSelector" in peer
        }

    def ingress_components(name):
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policies[name]["ingress"]
            for peer in rule.get("from", [])
            if "podSelector" in peer
        }

    assert egress_components("recfleet-gateway") == {"feature-store", "candidate-gen", "ranking", "event-ingest"}
    assert egress_components("recfleet-ranking") == {"feature-store"}
    assert egress_components("recfleet-feature-store") == set()
    assert ingress_components("recfleet-feature-store") == {"gateway", "ranking", "test"}
    assert ingress_components("recfleet-ranking") == {"gateway", "test"}
    assert ingress_components("recfleet-candidate-gen") == {"gateway", "test"}
    dns = policies["recfleet-allow-dns"]["egress"][0]["ports"]
    assert {(p["port"], p["protocol"]) for p in dns} == {(53, "UDP"), (53, "TCP")}

    # Backing systems: one policy each, for exactly the components whose settings use them.
    def selected_components(name):
        (expression,) = policies[name]["podSelector"]["matchExpressions"]
        assert expression["key"] == "app.kubernetes.io/component" and expression["operator"] == "In"
        return set(expression["values"])

    assert selected_components("recfleet-egress-kafka") == {"event-ingest", "ingest-sink", "ingest-realtime", "jobs"}
    assert "gateway" in selected_components("recfleet-egress-redis") and "candidate-gen" not in selected_components(
        "recfleet-egress-redis"
    )
    ports = {
        name: {p["port"] for rule in policies[f"recfleet-egress-{name}"]["egress"] for p in rule["ports"]}
        for name in ("postgres", "redis", "kafka")
    }
    assert ports == {"postgres": {5432}, "redis": {6379}, "kafka": {9092}}


def test_restricting_gateway_clients_keeps_scraping_and_the_helm_test(rendered):
    policies = {o["metadata"]["name"]: o["spec"] for o in by_kind(rendered["production"], "NetworkPolicy")}
    peers = [peer for rule in policies["recfleet-gateway"]["ingress"] for peer in rule["from"]]
    labels = [p.get("namespaceSelector", p.get("podSelector", {})).get("matchLabels", {}) for p in peers]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in labels
    assert {"kubernetes.io/metadata.name": "monitoring"} in labels
    assert any(m.get("app.kubernetes.io/component") == "test" for m in labels)


def test_monitoring_off_renders_no_prometheus_operator_objects(rendered):
    assert not [o for o in rendered["monitoring-off"] if o["apiVersion"].startswith("monitoring.coreos.com")]
    assert not [o for o in rendered["monitoring-off"] if "grafana_dashboard" in o["metadata"].get("labels", {})]


ALERT_TOPICS = {
    "latency": r"Latency",
    "availability": r"Availability",
    "empty recommendations": r"EmptyRecommendations",
    "fallback rate": r"Fallback",
    "cache hit rate": r"CacheHitRate",
    "consumer lag": r"ConsumerLag",
    "index staleness": r"IndexStale",
    "canary gates": r"Canary(ErrorRate|Latency)",
}


def test_alert_rules_cover_the_slos_and_link_existing_runbooks(rendered, kit):
    rule = next(o for o in rendered["default"] if o["kind"] == "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    for topic, pattern in ALERT_TOPICS.items():
        assert any(re.search(pattern, a["alert"]) for a in alerts), f"no alert for {topic}"
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        name = url.rsplit("/", 1)[1]
        runbook = kit.ROOT / "docs" / "runbooks" / name
        assert runbook.is_file(), f"{alert['alert']}: {runbook} missing"
        text = runbook.read_text()
        assert alert["alert"] in text, f"{name} does not name {alert['alert']}"
        assert alert["labels"]["severity"] in ("warning", "critical")


def test_dashboards_are_grafana_json_in_labelled_configmaps(rendered):
    dashboards = [
        o for o in by_kind(rendered["default"], "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    titles = set()
    for cm in dashboards:
        (body,) = cm["data"].values()
        board = json.loads(body)
        titles.add(board["title"])
        assert board["panels"] and all(p["targets"] for p in board["panels"])
    assert titles == {
        "recfleet / Fleet overview",
        "recfleet / Recommendation path",
        "recfleet / Ingest",
        "recfleet / Models and index",
    }


def test_helm_test_hook_checks_every_grpc_service_and_the_rest_api(rendered):
    pod = next(o for o in rendered["canaries-on"] if o["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    grpc_services = {
        o["metadata"]["name"]
        for o in by_kind(rendered["canaries-on"], "Service")
        if any(p["name"] == "grpc" for p in o["spec"]["ports"]) and o["spec"].get("clusterIP") != "None"
    }
    assert {t.split(":")[0] for t in env["GRPC_TARGETS"].split(",")} == grpc_services
    assert env["GATEWAY_URL"] == "http://recfleet-gateway:8080"


def test_gateway_api_routes_split_only_the_gateway_by_its_canary_weight(rendered):
    objects = rendered["canaries-on"]
    http = next(o for o in objects if o["kind"] == "HTTPRoute")
    assert {b["name"]: b["weight"] for b in http["spec"]["rules"][0]["backendRefs"]} == {
        "recfleet-gateway": 95,
        "recfleet-gateway-canary": 5,
    }
    # The gateway splits the internal services itself; no mesh route splits them again.
    assert not [o for o in objects if o["kind"] == "GRPCRoute"]
    assert not [o for o in rendered["default"] if o["kind"] in ("GRPCRoute", "HTTPRoute")]


def test_the_gateway_reads_the_rendered_routing_file(rendered, tmp_path):
    traffic = pytest.importorskip("recfleet_store.traffic")
    path = tmp_path / "routing.json"
    path.write_text(config_maps(rendered["canaries-on"])["recfleet-routing"]["routing.json"])
    states = traffic.effective(
        ["ranking", "feature-store", "candidate-gen", "event-ingest"], {}, traffic.read_routing_file(str(path)), {}
    )
    assert {name: (s.weight, s.shadow_percent, s.source) for name, s in states.items()} == {
        "ranking": (10, 20, "routing-file"),
        "feature-store": (50, 0, "routing-file"),
        "candidate-gen": (1, 0, "routing-file"),
        "event-ingest": (100, 0, "routing-file"),
    }


def test_the_cursor_secret_comes_from_a_secret_when_one_is_named(rendered):
    objects = rendered["production"]
    gateway = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "recfleet-gateway")
    env, from_maps = container_env(objects, gateway["spec"]["template"]["spec"]["containers"][0])
    assert env["RECFLEET_GATEWAY_CURSOR_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "recfleet-gateway-cursor",
        "key": "cursor-secret",
    }
    assert "RECFLEET_GATEWAY_CURSOR_SECRET" not in from_maps


def test_every_cronjob_command_and_its_arguments_parse_in_the_jobs_cli(rendered):
    jobs_cli = importlib.import_module("recfleet_jobs.__main__")
    typer_main = importlib.import_module("typer.main")
    jobs_cli._load()
    group = typer_main.get_command(jobs_cli.app)
    parsed = set()
    for cron in by_kind(rendered["default"], "CronJob"):
        container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        name, args = container["command"][1], container.get("args", [])
        command = group.get_command(None, name)
        assert command is not None, f"recfleet-jobs has no command {name}"
        command.make_context(name, list(args))  # raises on an unknown option or a bad value
        parsed.add(name)
    assert parsed == REQUIRED_JOBS
