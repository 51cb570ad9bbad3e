"""The evaluator's autoscaling on progress lag: a KEDA ScaledObject and the TriggerAuthentication it uses.

KEDA's Redis Streams scaler reads the consumer group's ``lag`` (XINFO GROUPS, Redis 7+): entries
added to a stream and not yet delivered to the ``evaluator`` group. Pending entries would say
little (each replica holds only about concurrency x batch of them), and the stream's length counts
what was already stored. The target is lag per replica, so KEDA's HPA runs ``ceil(lag / target)``
replicas between the spec's minimum and maximum.

On a Redis Cluster progress is split over PROGRESS_STREAM_SHARDS streams (``<stream>:{p<k>}``) and
KEDA needs one trigger per stream. The HPA takes the *largest* of several metrics, so a per-trigger
target would under-scale by up to the shard count when lag is spread evenly; instead the triggers
are named ``p<k>`` and ``advanced.scalingModifiers`` (KEDA 2.12+) sums them into one metric with the
spec's target, which is exactly ``ceil(total lag / target)`` however the lag is spread.

The Redis address and credentials reach KEDA only through the TriggerAuthentication, which names
the platform's Secret and its keys (``secretTargetRef``): no value is copied into any object.
KEDA's scalers take an address (``host:port``), not a URL, so the Secret holds it beside REDIS_URL
(REDIS_ADDRESS; REDIS_USERNAME and REDIS_PASSWORD when the server wants them). TLS is on outside
development, where the pods themselves refuse anything but ``rediss://``.
"""

from __future__ import annotations

from typing import Any

from learner_operator.builders import common as c
from learner_operator.builders import evaluator
from learner_operator.models import LearnerPlatformSpec

API_VERSION = "keda.sh/v1alpha1"
SCALED_OBJECT = "ScaledObject"
TRIGGER_AUTHENTICATION = "TriggerAuthentication"
KINDS = frozenset({SCALED_OBJECT, TRIGGER_AUTHENTICATION})

#: learner_api.settings' PROGRESS_STREAM default, which the operator never changes, and
#: learner_api.streams.CONSUMER_GROUP (a test keeps both equal to the API's).
PROGRESS_STREAM = "lp:progress"
CONSUMER_GROUP = "evaluator"

ADDRESS_KEY = c.SCALER_ADDRESS_KEY
#: The Secret's keys KEDA reads, by its TriggerAuthentication parameter names (the address one is
#: ``address`` on one server and ``addresses`` on a cluster: a comma-separated list of nodes). A key
#: the Secret lacks resolves to an empty value in KEDA: no username, no password.
OPTIONAL_KEYS = {"REDIS_USERNAME": "username", "REDIS_PASSWORD": "password"}
SECRET_KEYS = (ADDRESS_KEY, *OPTIONAL_KEYS)


def wanted(spec: LearnerPlatformSpec) -> bool:
    """Does the spec ask for autoscaling? (Whether the cluster can do it is discovery's answer.)"""
    return spec.evaluator.enabled and spec.evaluator.autoscaling.enabled


def streams(spec: LearnerPlatformSpec) -> list[str]:
    """The streams the evaluator consumes, as learner_api.streams.ProgressStreams names them."""
    if not spec.redis.cluster:
        return [PROGRESS_STREAM]
    return [f"{PROGRESS_STREAM}:{{p{shard}}}" for shard in range(spec.redis.progress_stream_shards)]


def trigger_authentication(p: c.Platform) -> c.Manifest:
    secret = p.spec.secret_ref.name
    address = "addresses" if p.spec.redis.cluster else "address"
    refs = [{"parameter": address, "name": secret, "key": ADDRESS_KEY}]
    refs += [{"parameter": parameter, "name": secret, "key": key} for key, parameter in OPTIONAL_KEYS.items()]
    return {
        "apiVersion": API_VERSION,
        "kind": TRIGGER_AUTHENTICATION,
        "metadata": c.metadata(p, c.evaluator_name(p), evaluator.APP, evaluator.COMPONENT),
        "spec": {"secretTargetRef": refs},
    }


def _trigger(p: c.Platform, stream: str, name: str) -> dict[str, Any]:
    target = p.spec.evaluator.autoscaling.target_lag_per_replica
    return {
        "type": "redis-cluster-streams" if p.spec.redis.cluster else "redis-streams",
        "name": name,
        "metadata": {
            "stream": stream,
            "consumerGroup": CONSUMER_GROUP,
            "lagCount": str(target),
            # Activation decides only 0 <-> 1 replicas, and the evaluator never goes below one.
            "activationLagCount": "0",
            "enableTLS": "false" if p.spec.environment == "development" else "true",
        },
        "authenticationRef": {"name": c.evaluator_name(p)},
    }


def scaled_object(p: c.Platform) -> c.Manifest:
    scaling = p.spec.evaluator.autoscaling
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": c.evaluator_name(p)},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
    }
    names = streams(p.spec)
    if len(names) == 1:
        spec["triggers"] = [_trigger(p, names[0], "lag")]
    else:
        triggers = [_trigger(p, stream, f"p{shard}") for shard, stream in enumerate(names)]
        spec["triggers"] = triggers
        spec["advanced"] = {"scalingModifiers": {
            "formula": " + ".join(t["name"] for t in triggers),
            "target": str(scaling.target_lag_per_replica),
            "activationTarget": "0",
            "metricType": "AverageValue",
        }}
    return {
        "apiVersion": API_VERSION,
        "kind": SCALED_OBJECT,
        "metadata": c.metadata(p, c.evaluator_name(p), evaluator.APP, evaluator.COMPONENT),
        "spec": spec,
    }
