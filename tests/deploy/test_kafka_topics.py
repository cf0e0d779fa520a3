"""Kafka topics as a cluster needs them (issue 11, item 3): a hook Job creates them from
kafka.topics before the fleet starts, only the jobs read the layout, and the chart refuses
values that would leave consumers idle or writes impossible."""

from __future__ import annotations

import helm_python as helm
import pytest

LAYOUT = ("RECFLEET_KAFKA_TOPIC_PARTITIONS", "RECFLEET_KAFKA_REPLICATION_FACTOR", "RECFLEET_KAFKA_MIN_INSYNC_REPLICAS")


def _job(objects, name):
    return next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == name)


def _inline_env(container):
    return {e["name"]: e.get("value") for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("scenario", ["default", "minimal", "production"])
def test_create_topics_is_a_hook_that_runs_after_the_migrations(rendered, merged_values, scenario):
    objects, values = rendered[scenario], merged_values[scenario]
    migrate, topics = _job(objects, "recfleet-migrate"), _job(objects, "recfleet-create-topics")
    annotations = topics["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) > int(migrate["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")
    container = topics["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["recfleet-jobs", "create-topics"]
    # Pre-install hooks run before the release's ConfigMaps exist: everything is inline.
    assert "envFrom" not in container
    env = _inline_env(container)
    layout = values["kafka"]["topics"]
    assert [env[name] for name in LAYOUT] == [
        str(layout["partitions"]),
        str(layout["replicationFactor"]),
        str(layout["minInsyncReplicas"]),
    ]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == values["kafka"]["bootstrapServers"]
    assert env["RECFLEET_EVENTS_TOPIC"] == layout["events"] and env["RECFLEET_USERS_TOPIC"] == layout["users"]


def test_production_topics_are_replicated_and_have_a_partition_per_consumer(merged_values):
    values = merged_values["production"]
    layout = values["kafka"]["topics"]
    assert layout["replicationFactor"] >= 3 and 2 <= layout["minInsyncReplicas"] < layout["replicationFactor"]
    for key in ("ingestSink", "ingestRealtime"):
        assert values[key]["autoscaling"]["maxReplicas"] <= layout["partitions"]


@pytest.mark.parametrize("scenario", ["default", "minimal", "production", "canaries-on"])
def test_only_the_jobs_get_the_topic_layout(rendered, scenario):
    """Services never create topics any more, so none of them is handed the layout."""
    objects = rendered[scenario]
    for obj in objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-env"):
            has_layout = set(LAYOUT) <= set(obj.get("data") or {})
            assert has_layout == (obj["metadata"]["name"] == "recfleet-jobs-env"), obj["metadata"]["name"]
        if obj["kind"] in ("Deployment", "StatefulSet"):
            container = obj["spec"]["template"]["spec"]["containers"][0]
            assert not set(LAYOUT) & {e["name"] for e in container.get("env", [])}, obj["metadata"]["name"]


def test_the_layout_comes_from_the_values(kit):
    objects = kit.render({"kafka": {"topics": {"partitions": 24, "replicationFactor": 5, "minInsyncReplicas": 3}}})
    env = _inline_env(_job(objects, "recfleet-create-topics")["spec"]["template"]["spec"]["containers"][0])
    assert [env[name] for name in LAYOUT] == ["24", "5", "3"]
    jobs_env = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "recfleet-jobs-env")
    assert [jobs_env["data"][name] for name in LAYOUT] == ["24", "5", "3"]


def test_the_hook_jobs_reach_kafka_and_postgres_even_with_the_batch_jobs_off(kit):
    objects = kit.render({"jobs": {"enabled": False}})
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    for system in ("kafka", "postgres"):
        (expression,) = policies[f"recfleet-egress-{system}"]["podSelector"]["matchExpressions"]
        assert "jobs" in expression["values"], system
    labels = _job(objects, "recfleet-create-topics")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "jobs"


REFUSED = [
    # More consumers than partitions: the extra pods of the group would idle.
    ({"ingestSink": {"autoscaling": {"maxReplicas": 13}}}, "ingestSink can run 13 consumers"),
    ({"ingestRealtime": {"autoscaling": {"maxReplicas": 40}}}, "ingestRealtime can run 40 consumers"),
    ({"kafka": {"topics": {"partitions": 4}}}, "kafka.topics.partitions is 4"),
    ({"ingestSink": {"autoscaling": {"enabled": False}, "replicas": 16}}, "ingestSink can run 16 consumers"),
    # A canary consumer joins the same group.
    ({"ingestRealtime": {"canary": {"enabled": True, "replicas": 1}}}, "ingestRealtime can run 13 consumers"),
    # min.insync.replicas above the replication factor: acks=all writes could never succeed.
    ({"kafka": {"topics": {"minInsyncReplicas": 4}}}, "kafka.topics.minInsyncReplicas (4)"),
    ({"kafka": {"topics": {"replicationFactor": 1}}}, "kafka.topics.minInsyncReplicas (2)"),
    ({"kafka": {"topics": {"partitions": 0}}}, "/kafka/topics/partitions"),
    ({"kafka": {"topics": {"replicationFactor": 0}}}, "/kafka/topics/replicationFactor"),
]


@pytest.mark.parametrize("values, message", REFUSED, ids=[m for _, m in REFUSED])
def test_the_chart_refuses_a_topic_layout_that_cannot_work(kit, values, message):
    with helm.Chart.load(kit.CHART) as chart, pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as error:
        chart.render(values, name="recfleet", namespace="recfleet")
    assert message in str(error.value)


def test_event_ingest_is_not_limited_by_partitions(kit):
    """event-ingest produces; only consumer groups are bounded by the partition count."""
    objects = kit.render({"eventIngest": {"autoscaling": {"maxReplicas": 40}}})
    hpa = next(
        o
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "recfleet-event-ingest"
    )
    assert hpa["spec"]["maxReplicas"] == 40
