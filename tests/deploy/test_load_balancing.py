"""Scaling out spreads load (issue 11, item 2): every gRPC client target is a headless Service
of ready pods in dns:/// form, so the client's round robin reaches every pod the HPA adds,
and every server closes connections after one configured age so clients re-resolve."""

from __future__ import annotations

from chart_scenarios import PREFIXES, per_scenario

TRACK, SHARD = "recfleet.io/track", "recfleet.io/shard"


def _workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def _env_maps(objects):
    return {o["metadata"]["name"]: o.get("data") or {} for o in objects if o["kind"] == "ConfigMap"}


def _grpc_targets(objects):
    """(ConfigMap, variable, target) for every gRPC address the chart hands a client."""
    for name, data in _env_maps(objects).items():
        for var, value in data.items():
            if var.endswith(("_TARGET", "_TARGETS")) and value:
                for target in value.split(","):
                    yield name, var, target


@per_scenario
def test_every_grpc_target_is_a_headless_service_of_the_right_pods(rendered, scenario):
    objects = rendered[scenario]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    pods = [(o["spec"]["template"]["metadata"]["labels"], o["spec"]["template"]["spec"]) for o in _workloads(objects)]
    checked = 0
    for config_map, var, target in _grpc_targets(objects):
        where = f"{config_map} {var}={target}"
        assert target.startswith("dns:///"), f"{where}: not a dns:/// target, the client would pin one pod"
        host, port = target.removeprefix("dns:///").rsplit(":", 1)
        service = services.get(host)
        assert service is not None, f"{where}: no such Service"
        assert service["spec"].get("clusterIP") == "None", f"{where}: a ClusterIP hides every pod behind one address"
        assert service["spec"].get("publishNotReadyAddresses") is False, where
        assert int(port) in [p["port"] for p in service["spec"]["ports"]], where
        selected = [(labels, spec) for labels, spec in pods if _selects(service["spec"]["selector"], labels)]
        assert selected, f"{where}: selects no pod"
        track = "canary" if "_CANARY_" in var else "stable"
        for labels, spec in selected:
            assert labels[TRACK] == track, f"{where}: reaches {labels[TRACK]} pods"
            grpc = [p for p in spec["containers"][0]["ports"] if p["name"] == "grpc"]
            assert grpc and grpc[0]["containerPort"] == int(port), where
        checked += 1
    assert checked >= 5


@per_scenario
def test_candidate_targets_list_each_shards_headless_service_in_shard_order(rendered, merged_values, scenario):
    objects = rendered[scenario]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    shards = merged_values[scenario]["candidateGen"]["shards"]["count"]
    gateway_env = _env_maps(objects)["recfleet-gateway-env"]
    for var in ("RECFLEET_GATEWAY_CANDIDATE_GEN_TARGETS", "RECFLEET_GATEWAY_CANDIDATE_GEN_CANARY_TARGETS"):
        if not gateway_env[var]:
            continue
        targets = gateway_env[var].split(",")
        assert len(targets) == shards
        for shard, target in enumerate(targets):
            service = services[target.removeprefix("dns:///").rsplit(":", 1)[0]]
            assert service["spec"]["selector"][SHARD] == str(shard), (var, target)


@per_scenario
def test_every_grpc_workload_has_a_headless_service_selecting_exactly_its_pods(rendered, scenario):
    """Per component and track, and per candidate-gen shard: each is one pool the client balances."""
    objects = rendered[scenario]
    headless = [o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"]
    checked = 0
    for workload in _workloads(objects):
        ports = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
        if "grpc" not in ports:
            continue
        own = workload["spec"]["selector"]["matchLabels"]
        matching = [s for s in headless if s["spec"]["selector"] == own]
        assert matching, f"{workload['kind']}/{workload['metadata']['name']}: no headless Service of its own pods"
        assert all(s["spec"]["publishNotReadyAddresses"] is False for s in matching)
        checked += 1
    assert checked >= 4


def test_ranking_reaches_the_feature_store_through_its_headless_service(rendered):
    data = _env_maps(rendered["default"])["recfleet-ranking-env"]
    assert data["RECFLEET_RANKING_FEATURE_STORE_TARGET"] == "dns:///recfleet-feature-store-headless:50061"


@per_scenario
def test_every_component_closes_connections_after_the_one_configured_age(rendered, merged_values, scenario):
    objects = rendered[scenario]
    grpc = merged_values[scenario]["grpc"]
    maps = _env_maps(objects)
    checked = 0
    for workload in _workloads(objects):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        prefix = PREFIXES[component]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        env = {}
        for source in container["envFrom"]:
            env.update(maps[source["configMapRef"]["name"]])
        assert float(env[f"{prefix}MAX_CONNECTION_AGE_SECONDS"]) == grpc["maxConnectionAgeSeconds"], component
        assert float(env[f"{prefix}MAX_CONNECTION_AGE_GRACE_SECONDS"]) == grpc["maxConnectionAgeGraceSeconds"], (
            component
        )
        checked += 1
    assert checked >= 7


def test_the_connection_age_is_one_value_for_the_fleet(kit):
    objects = kit.render({"grpc": {"maxConnectionAgeSeconds": 120, "maxConnectionAgeGraceSeconds": 20}})
    values = {
        (k, v)
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-env")
        for k, v in (o.get("data") or {}).items()
        if "MAX_CONNECTION_AGE" in k
    }
    assert {v for k, v in values if k.endswith("AGE_SECONDS")} == {"120"}
    assert {v for k, v in values if k.endswith("AGE_GRACE_SECONDS")} == {"20"}
    assert {k.split("_MAX_")[0] for k, _ in values} == {
        "RECFLEET_GATEWAY",
        "RECFLEET_CANDIDATES",
        "RECFLEET_RANKING",
        "RECFLEET_FEATURES",
        "RECFLEET_INGEST",
    }
