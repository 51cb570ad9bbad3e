"""One reconcile of one LearnerPlatform: observe, apply what differs, prune, report.

Level-triggered: it does not care *why* it runs (CR change, child drift, Secret rotation, resync);
it compares the desired children with the live ones and sends only the difference. A reconcile
that finds nothing to do sends no mutating request at all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import logging
from collections.abc import Callable
from typing import Any

from learner_operator import builders, drift
from learner_operator.builders import common
from learner_operator.kube import ApiError, Discovery, KubeApi, ResourceRef, ref_of
from learner_operator.kube.paths import plural_of
from learner_operator.livestate import LiveState
from learner_operator.metrics import Metrics
from learner_operator.models import API_VERSION, InvalidSpec, LearnerPlatformSpec, parse_spec
from learner_operator.platforms import Platforms, Snapshot
from learner_operator.status import Observation, Verdict, merge_conditions, observe_deployment, verdicts
from learner_operator.status import workload_status as summarise

Logger = logging.Logger | logging.LoggerAdapter[Any]
#: "Look again now" for the work queue (engine.Engine): a retry after 0 s that is not a failure.
AGAIN = 0.0


@dataclasses.dataclass
class Deps:
    api: KubeApi
    live: LiveState
    platforms: Platforms
    metrics: Metrics
    discovery: Discovery
    #: Seconds before retrying a platform whose reconcile hit an API error (doubled per failure).
    retry_after_error: float = 10.0
    now: Callable[[], str] = lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def check_secret(
    api: KubeApi, namespace: str, spec: LearnerPlatformSpec, uid: str, *, autoscaler: bool = False,
) -> tuple[Verdict, str]:
    """Does the referenced Secret hold what the enabled components need? Returns the verdict and the digest.

    Only key names ever appear in messages; the values are decoded for the digest and dropped.
    ``autoscaler``: KEDA will scale the evaluator, so its scaler's key is needed too.
    """
    name = spec.secret_ref.name
    secret = await api.get(ResourceRef("v1", "secrets", namespace, name))
    if secret is None:
        return Verdict("False", "SecretNotFound", (
            f"Secret {namespace}/{name} does not exist: create it from your env file with "
            f"`kubectl -n {namespace} create secret generic {name} --from-env-file=.env.production`"
        )), ""
    data: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value or "")
        except (binascii.Error, ValueError):
            data[key] = b""
    for key, value in (secret.get("stringData") or {}).items():
        data.setdefault(key, str(value).encode())
    if unmet := builders.unmet_secret_needs(spec, data, autoscaler=autoscaler):
        return Verdict("False", "SecretKeysMissing", (
            f"Secret {namespace}/{name} lacks {'; '.join(map(str, unmet))} (or they are empty); "
            f"add them to the env file and recreate the Secret"
        )), ""
    wanted = sorted({key for need in builders.secret_needs(spec, autoscaler=autoscaler) for key in need.keys
                     if data.get(key)})
    return Verdict("True", "SecretFound", f"Secret {name} holds {', '.join(wanted)}"), \
        builders.secret_digest(uid, data)


@dataclasses.dataclass
class SyncResult:
    errors: list[str] = dataclasses.field(default_factory=list)
    #: Optional kinds the spec asks for that the cluster does not serve, with what to install.
    unserved: list[str] = dataclasses.field(default_factory=list)
    #: The server says the platform is gone or being deleted: nothing was written, nothing more will be.
    gone: bool = False
    #: Someone else changed a child while our write of it was on its way: look again.
    changed_meanwhile: bool = False


async def _desired(deps: Deps, platform: builders.Platform, result: SyncResult) -> list[dict[str, Any]]:
    """The children to apply: those of optional kinds the cluster does not serve are left out (and
    reported, together when the advice is the same), and the builders adapt the rest to that."""
    missing: dict[str, list[dict[str, Any]]] = {}
    for manifest in builders.children(platform):
        kind = manifest["kind"]
        if kind in builders.OPTIONAL_KINDS and not await deps.discovery.served(manifest["apiVersion"],
                                                                                 plural_of(kind)):
            missing.setdefault(builders.OPTIONAL_KINDS[kind], []).append(manifest)
    for advice, manifests in missing.items():
        names = " and ".join(f"{m['kind']} {m['metadata']['name']}" for m in manifests)
        apis = " nor ".join(f"{m['apiVersion']} {m['kind']}" for m in manifests)
        result.unserved.append(f"{names} {'is' if len(manifests) == 1 else 'are'} not created: the cluster does "
                               f"not serve {apis}; {advice}")
    unserved = {m["kind"] for manifests in missing.values() for m in manifests}
    return [drift.with_digest(m) for m in builders.children(platform, unserved=unserved)]


async def _serves_autoscaler(deps: Deps, spec: LearnerPlatformSpec) -> bool:
    """Will KEDA scale the evaluator? (Asked for, and discovery finds KEDA's kinds; cached by Discovery.)"""
    if not builders.wants_autoscaler(spec):
        return False
    return all([await deps.discovery.served(kind.api_version, kind.plural) for kind in builders.AUTOSCALER_KINDS])


async def _still_wanted(deps: Deps, cr: Snapshot, fresh: asyncio.Task[dict[str, Any] | None] | None) -> bool:
    """Before the first write: is the platform still there, the same one, and not being deleted?

    Watches can miss a deletion (an API server restart, a watch stuck on "429 storage is
    (re)initializing"); acting on a platform that is gone re-creates children the garbage collector
    removes again, in a loop. One GET before writing ends that.
    """
    found = await (fresh if fresh is not None else deps.api.get(cr.ref))
    meta = (found or {}).get("metadata") or {}
    if found is not None and meta.get("uid") == cr.uid and not meta.get("deletionTimestamp"):
        return True
    deps.platforms.forget_if(cr.key, cr.uid)
    deps.live.drop_owner(cr.uid)
    return False


async def _sync_children(
    deps: Deps, cr: Snapshot, spec: LearnerPlatformSpec, secret_hash: str, live: dict[tuple[str, str], Any],
    logger: Logger, fresh: asyncio.Task[dict[str, Any] | None] | None = None,
) -> SyncResult:
    """Apply the children that differ and delete the ones no longer wanted."""
    result = SyncResult()
    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec, secret_hash)
    desired = await _desired(deps, platform, result)
    stale: list[dict[str, Any]] = []
    for manifest in desired:
        key = (manifest["kind"], manifest["metadata"]["name"])
        owned = deps.live.applied_ownership(cr.uid, *key)
        if drift.needs_apply(manifest, live.get(key), owned):
            stale.append(manifest)
        elif owned is None:
            deps.live.adopt(cr.uid, *key, live[key])
    wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
    # A child being deleted already is left to its finalizers (KEDA holds a ScaledObject until its HPA is gone).
    unwanted = [(kind, name) for (kind, name), body in live.items()
                if (kind, name) not in wanted and not (body.get("metadata") or {}).get("deletionTimestamp")]
    if (stale or unwanted) and not await _still_wanted(deps, cr, fresh):
        logger.info("The platform is gone or being deleted: its children are left to the garbage collector")
        result.gone = True
        return result

    applied_keys: list[str] = []

    async def apply(manifest: dict[str, Any]) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        deps.live.writing(cr.uid, *key)
        try:
            answer = await deps.api.apply(ref_of(manifest), manifest)
        except ApiError as exc:
            result.changed_meanwhile |= deps.live.write_failed(cr.uid, *key)
            result.errors.append(f"{key[0]} {key[1]}: {exc.message or exc.reason}")
            return
        applied_keys.append(f"{key[0]}/{key[1]}")
        result.changed_meanwhile |= deps.live.remember(cr.uid, answer)
        live[key] = answer

    # Wave by wave (what a pod refers to exists before the pods), each wave's children at once.
    for wave in builders.APPLY_WAVES:
        await asyncio.gather(*(apply(m) for m in stale if m["kind"] in wave))
    if applied_keys:
        logger.info("Applied %s", ", ".join(applied_keys))
    for kind, name in unwanted:
        body = live[(kind, name)]
        ref = ResourceRef(str(body.get("apiVersion", "")), plural_of(kind), cr.namespace, name)
        try:
            await deps.api.delete(ref)
        except ApiError as exc:
            result.errors.append(f"deleting {kind} {name}: {exc.message or exc.reason}")
            continue
        logger.info("Deleted %s %s (switched off in the spec)", kind, name)
        deps.live.forget(cr.uid, kind, name, str(body.get("metadata", {}).get("resourceVersion", "")))
        del live[(kind, name)]
    return result


async def reconcile(deps: Deps, cr: Snapshot, logger: Logger) -> float | None:
    """Returns the seconds after which to try again, or None when nothing needs a retry."""
    if cr.deleting:
        return None  # the garbage collector takes the children; writing now would only fight it
    try:
        spec = parse_spec(cr.spec)
    except InvalidSpec as exc:
        await _report(deps, cr, Observation(cr.generation, invalid_spec=str(exc)), logger)
        return None  # a new generation triggers the next attempt; retrying the same spec cannot help
    if spec.paused:
        await _report(deps, cr, Observation(cr.generation, paused=True), logger)
        return None

    live = deps.live.children_of(cr.uid)
    # A platform without children is about to be written for: read it alongside the Secret.
    fresh = asyncio.create_task(deps.api.get(cr.ref)) if not live else None
    try:
        autoscaler = await _serves_autoscaler(deps, spec)
        secret, secret_hash = await check_secret(deps.api, cr.namespace, spec, cr.uid, autoscaler=autoscaler)
        synced = SyncResult()
        if secret.status == "True":
            synced = await _sync_children(deps, cr, spec, secret_hash, live, logger, fresh)
            if synced.gone:
                return None
    finally:
        if fresh is not None and not fresh.done():
            fresh.cancel()
        elif fresh is not None and not fresh.cancelled():
            fresh.exception()  # not needed after all (no Secret yet): its failure is nobody's business
    # Without the Secret nothing is applied, and nothing is pruned either: running pods keep running.

    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec)
    api = observe_deployment(live.get(("Deployment", common.api_name(platform))))
    evaluator = observe_deployment(live.get(("Deployment", common.evaluator_name(platform))))
    observation = Observation(
        cr.generation, secret=secret, apply_errors=tuple(synced.errors), api=api,
        evaluator=evaluator if spec.evaluator.enabled else None, unserved=tuple(synced.unserved),
    )
    await _report(deps, cr, observation, logger)
    if synced.errors:
        return deps.retry_after_error
    return AGAIN if synced.changed_meanwhile else None


async def _report(deps: Deps, cr: Snapshot, obs: Observation, logger: Logger) -> None:
    """Write the status only when it differs from what the CR already says."""
    platform_names = (f"{cr.name}-learner-api", f"{cr.name}-evaluator")
    old_conditions = list(cr.status.get("conditions") or [])
    conditions = merge_conditions(old_conditions, verdicts(obs, *platform_names), cr.generation, deps.now())
    status: dict[str, Any] = {"observedGeneration": cr.generation, "conditions": conditions}
    if not obs.invalid_spec and not obs.paused:
        status["learnerApi"] = summarise(obs.api)
        status["evaluator"] = summarise(obs.evaluator)
    if all(cr.status.get(key) == value for key, value in status.items()):
        return
    await _warn_on_transition(deps, cr, old_conditions, conditions, logger)
    try:
        written = await deps.api.patch_status(cr.ref, status)
    except ApiError as exc:
        if exc.status != 404:
            raise
        deps.platforms.forget_if(cr.key, cr.uid)  # deleted meanwhile, whatever the watch stream says
        deps.live.drop_owner(cr.uid)
        return
    deps.platforms.wrote(written)
    logger.debug("Status written: %s", {c["type"]: c["reason"] for c in conditions})


_QUIET_REASONS = {"RolloutInProgress", "Paused", "DeploymentMissing", "MinimumReplicasUnavailable"}


async def _warn_on_transition(
    deps: Deps, cr: Snapshot, old: list[dict[str, Any]], new: list[dict[str, Any]], logger: Logger,
) -> None:
    """A Kubernetes Event when Ready turns False for a reason a person must fix (not during rollouts)."""
    before = {c.get("type"): c for c in old}.get("Ready") or {}
    after = {c.get("type"): c for c in new}.get("Ready") or {}
    if after.get("status") == "False" and after.get("reason") not in _QUIET_REASONS and (
        before.get("status") != "False" or before.get("reason") != after.get("reason")
    ):
        involved = {"apiVersion": API_VERSION, "kind": "LearnerPlatform", "namespace": cr.namespace,
                    "name": cr.name, "uid": cr.uid}
        try:
            await deps.api.post_event(involved, "Warning", str(after.get("reason")), str(after.get("message")))
        except ApiError as exc:  # an event is a courtesy: never fail the reconcile for it
            logger.warning("Could not post an event: %s", exc)
