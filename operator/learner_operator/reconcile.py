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

from learner_operator import builders, drift, migration, rollout
from learner_operator.builders import common, learner_api
from learner_operator.builders import evaluator as evaluator_builders
from learner_operator.kube import ApiError, Discovery, KubeApi, ResourceRef, ref_of
from learner_operator.kube.paths import plural_of
from learner_operator.livestate import LiveState
from learner_operator.metrics import Metrics
from learner_operator.models import API_VERSION, InvalidSpec, LearnerPlatformSpec, parse_spec
from learner_operator.platforms import Key, Platforms, Snapshot
from learner_operator.podstate import PodStates
from learner_operator.secretcache import SecretCache
from learner_operator.status import Observation, Verdict, merge_conditions, observe_deployment, verdicts
from learner_operator.status import workload_status as summarise
from learner_operator.timing import Later

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
    pods: PodStates = dataclasses.field(default_factory=PodStates)
    secrets: SecretCache = dataclasses.field(default_factory=SecretCache)
    rollouts: rollout.Memory = dataclasses.field(default_factory=rollout.Memory)

    def forget_platform(self, key: Key, uid: str) -> None:
        """The platform is gone: drop everything known about it (unless a new one took its name)."""
        self.platforms.forget_if(key, uid)
        self.rollouts.forget(uid)
        self.live.drop_owner(uid)
        self.secrets.forget_platform(uid)
        if self.platforms.get(key) is None:
            self.pods.forget(key)
    #: Seconds before retrying a platform whose reconcile hit an API error (doubled per failure).
    retry_after_error: float = 10.0
    now: Callable[[], str] = lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def check_secret(
    api: KubeApi, namespace: str, spec: LearnerPlatformSpec, uid: str, cache: SecretCache | None = None, *,
    autoscaler: bool = False,
) -> tuple[Verdict, str]:
    """Does the referenced Secret hold what the enabled components need? Returns the verdict and the digest.

    Only key names ever appear in messages; the values are decoded for the digest and dropped. With a
    ``cache`` whose Secret is still at the version last read, nothing is read at all. ``autoscaler``:
    KEDA will scale the evaluator, so its scaler's key is needed too.
    """
    name = spec.secret_ref.name
    cached = cache.lookup((namespace, name), uid, lambda values: builders.secret_digest(uid, values)) if (
        cache is not None) else None
    if cached is not None:
        present, digest = cached
        return _secret_verdict(namespace, name, spec, present, digest, autoscaler)
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
    present = frozenset(key for key, value in data.items() if value)
    digest = builders.secret_digest(uid, data)
    if cache is not None:
        wired = {key: value for key, value in data.items() if key in builders.SECRET_DIGEST_KEYS}
        cache.store((namespace, name), str((secret.get("metadata") or {}).get("resourceVersion", "")), present, uid,
                    digest, wired)
    return _secret_verdict(namespace, name, spec, present, digest, autoscaler)


def _secret_verdict(
    namespace: str, name: str, spec: LearnerPlatformSpec, present: frozenset[str], digest: str, autoscaler: bool,
) -> tuple[Verdict, str]:
    if unmet := builders.unmet_secret_needs(spec, dict.fromkeys(present, b"x"), autoscaler=autoscaler):
        return Verdict("False", "SecretKeysMissing", (
            f"Secret {namespace}/{name} lacks {'; '.join(map(str, unmet))} (or they are empty); "
            f"add them to the env file and recreate the Secret"
        )), ""
    wanted = sorted({key for need in builders.secret_needs(spec, autoscaler=autoscaler) for key in need.keys
                     if key in present})
    return Verdict("True", "SecretFound", f"Secret {name} holds {', '.join(wanted)}"), digest


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
    built = builders.children(platform)
    for manifest in built:
        kind = manifest["kind"]
        if kind in builders.OPTIONAL_KINDS and not await deps.discovery.served(manifest["apiVersion"],
                                                                                 plural_of(kind)):
            missing.setdefault(builders.OPTIONAL_KINDS[kind], []).append(manifest)
    for advice, manifests in missing.items():
        names = " and ".join(f"{m['kind']} {m['metadata']['name']}" for m in manifests)
        apis = " nor ".join(f"{m['apiVersion']} {m['kind']}" for m in manifests)
        result.unserved.append(f"{names} {'is' if len(manifests) == 1 else 'are'} not created: the cluster does "
                               f"not serve {apis}; {advice}")
    if missing:  # built again without them: the builders adapt the rest (the evaluator's replicas without KEDA)
        built = builders.children(platform, unserved={m["kind"] for ms in missing.values() for m in ms})
    return [drift.with_digest(m) for m in built]


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
    deps.forget_platform(cr.key, cr.uid)
    return False


async def _sync_children(
    deps: Deps, cr: Snapshot, spec: LearnerPlatformSpec, secret_hash: str, live: dict[tuple[str, str], Any],
    logger: Logger, gate: migration.Gate, fresh: asyncio.Task[dict[str, Any] | None] | None = None,
    plan: rollout.Plan | None = None, *, seen_just_now: bool = False,
) -> SyncResult:
    """Apply the children that differ and delete the ones no longer wanted."""
    result = SyncResult()
    serving = plan.stable_image if plan is not None and plan.stable_image is not None else gate.serving_image
    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec, secret_hash, serving,
                                 canary=plan.canary if plan is not None else None)
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
    if (stale or unwanted or gate.job is not None) and not seen_just_now and not await _still_wanted(deps, cr, fresh):
        logger.info("The platform is gone or being deleted: its children are left to the garbage collector")
        result.gone = True
        return result

    applied_keys: list[str] = []

    async def apply(manifest: dict[str, Any]) -> None:
        key = (manifest["kind"], manifest["metadata"]["name"])
        deps.live.writing(cr.uid, *key)
        try:
            if drift.hands_over_replicas(manifest, live.get(key)):
                await deps.api.apply(ref_of(manifest), drift.replicas_handover(manifest, live[key]),
                                     manager=drift.HANDOVER_MANAGER, force=False)
            answer = await deps.api.apply(ref_of(manifest), manifest)
        except ApiError as exc:
            result.changed_meanwhile |= deps.live.write_failed(cr.uid, *key)
            result.errors.append(f"{key[0]} {key[1]}: {exc.message or exc.reason}")
            return
        except BaseException:
            deps.live.write_failed(cr.uid, *key)  # a timeout or a reset: whether it landed, the watch will say
            raise
        applied_keys.append(f"{key[0]}/{key[1]}")
        result.changed_meanwhile |= deps.live.remember(cr.uid, answer)
        live[key] = answer

    # Wave by wave (what a pod refers to exists before the pods), each wave's children at once; an
    # unexpected failure waits for the rest of its wave before it ends the reconcile.
    for wave in builders.APPLY_WAVES:
        outcomes = await asyncio.gather(*(apply(m) for m in stale if m["kind"] in wave), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
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
    if gate.job is not None and (error := await migration.start(deps.api, deps.live, cr.uid, gate.job, logger)):
        result.errors.append(error)  # after the other children: its ServiceAccount and ConfigMap exist now
    if gate.error:
        result.errors.append(gate.error)
    return result


async def reconcile(deps: Deps, cr: Snapshot, logger: Logger) -> float | None:
    """Returns the seconds after which to try again, or None when nothing needs a retry."""
    first_sight = deps.platforms.first_sight(cr.uid)
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

    before = list(cr.status.get("conditions") or [])  # what the events compare with (cr may be rewritten below)
    live = deps.live.children_of(cr.uid)
    # The migration Jobs are the gate's (learner_operator.migration), not the diff's: never applied, never pruned.
    jobs = {name: body for (kind, name), body in live.items() if kind in builders.ONE_SHOT_KINDS}
    live = {key: body for key, body in live.items() if key[0] not in builders.ONE_SHOT_KINDS}
    # A platform without children is about to be written for: read it alongside the Secret, unless it was
    # first seen just now (see Platforms.first_sight).
    fresh = asyncio.create_task(deps.api.get(cr.ref)) if not live and not first_sight else None
    gate: migration.Gate | None = None
    plan: rollout.Plan | None = None
    try:
        autoscaler = await _serves_autoscaler(deps, spec)
        secret, secret_hash = await check_secret(deps.api, cr.namespace, spec, cr.uid, deps.secrets,
                                                 autoscaler=autoscaler)
        synced = SyncResult()
        if secret.status == "True":
            if migration.RETRY_ANNOTATION in cr.annotations:
                retried = await _retry_migration(deps, cr, spec, jobs, logger)
                if retried is None:
                    return None  # deleted meanwhile
                cr = retried
            gate = await migration.decide(deps.api, cr, spec, jobs)
            if gate.new_outcome:
                recorded = await _record_migration(deps, cr, gate, logger)
                if recorded is None:
                    return None  # deleted meanwhile
                cr = recorded
            plan = await _plan_rollout(deps, cr, spec, gate, live, logger)
            if plan.record and plan.status is not None:
                recorded = await _record_rollout(deps, cr, plan, logger)
                if recorded is None:
                    return None  # deleted meanwhile
                cr = recorded
            synced = await _sync_children(deps, cr, spec, secret_hash, live, logger, gate, fresh, plan,
                                          seen_just_now=first_sight)
            if synced.gone:
                return None
            if plan.acknowledge:
                await _acknowledge(deps, cr, logger)
    finally:
        if fresh is not None and not fresh.done():
            fresh.cancel()
        elif fresh is not None and not fresh.cancelled():
            fresh.exception()  # not needed after all (no Secret yet): its failure is nobody's business
    # Without the Secret nothing is applied, and nothing is pruned either: running pods keep running.

    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec)
    api = dataclasses.replace(observe_deployment(live.get(("Deployment", common.api_name(platform)))),
                              problems=deps.pods.problems(cr.key, learner_api.APP))
    evaluator = dataclasses.replace(observe_deployment(live.get(("Deployment", common.evaluator_name(platform)))),
                                    problems=deps.pods.problems(cr.key, evaluator_builders.APP))
    observation = Observation(
        cr.generation, secret=secret, apply_errors=tuple(synced.errors), api=api,
        evaluator=evaluator if spec.evaluator.enabled else None, unserved=tuple(synced.unserved),
        migration=gate.verdict if gate is not None else None,
        rollout=plan.verdict if plan is not None else None,
    )
    extra = dict(gate.status) if gate is not None else {}
    if plan is not None and plan.status is not None:
        extra["rollout"] = plan.status
    await _report(deps, cr, observation, logger, extra, warn_since=before)
    if synced.errors:
        return deps.retry_after_error  # a failure: backs off (a canary is judged again once it is over)
    return AGAIN if synced.changed_meanwhile else plan.again if plan is not None else None


async def _plan_rollout(deps: Deps, cr: Snapshot, spec: LearnerPlatformSpec, gate: migration.Gate,
                        live: dict[tuple[str, str], Any], logger: Logger) -> rollout.Plan:
    """The canary rollout's next move (learner_operator.rollout), on the newest image the gate lets run."""
    platform = builders.Platform(cr.name, cr.namespace, cr.uid, spec)
    inputs = rollout.Inputs(
        cr=cr, spec=spec, target=gate.serving_image or spec.image,
        stable_live=live.get(("Deployment", common.api_name(platform))),
        canary_live=live.get(("Deployment", builders.canary.name(platform))),
        problems=deps.pods.problems(cr.key, learner_api.APP),
    )
    try:
        return await rollout.decide(deps.api, deps.rollouts, inputs, logger)
    except ApiError as exc:  # the pods could not be listed: keep everything as it is, and look again
        logger.warning("Canary analysis skipped: %s", exc.message or exc.reason)
        recorded = cr.status.get("rollout") or {}
        stable = rollout.image_of(recorded.get("stable") or {}, spec)
        keep = None if stable is None or recorded.get("phase") != rollout.PROGRESSING else builders.CanaryPlan(
            gate.serving_image or spec.image, int((live.get(("Deployment", builders.canary.name(platform))) or {})
                                                  .get("spec", {}).get("replicas") or 1))
        return rollout.Plan(stable, keep, None, None, again=Later(deps.retry_after_error))


async def _record_rollout(deps: Deps, cr: Snapshot, plan: rollout.Plan, logger: Logger) -> Snapshot | None:
    """Write a rollout's new step, promotion or rollback before the children follow it, so that a restart in
    between resumes from what was decided. Returns the platform as written, or None when it is gone."""
    assert plan.status is not None
    old = list(cr.status.get("conditions") or [])
    new = {rollout.CONDITION: plan.verdict} if plan.verdict is not None else {}
    conditions = merge_conditions(old, new, cr.generation, deps.now())
    written = await _write_status(deps, cr, {"conditions": conditions, "rollout": plan.status})
    if written is None:
        return None
    logger.info("Recorded the rollout: %s", plan.status.get("message"))
    return dataclasses.replace(cr, packed_status=Snapshot.of(written).packed_status)


async def _retry_migration(deps: Deps, cr: Snapshot, spec: LearnerPlatformSpec, jobs: dict[str, dict[str, Any]],
                           logger: Logger) -> Snapshot | None:
    """learner.dev/retry-migration: forget the spec's image's failed migration (its Job deleted, the record
    cleared), so that the gate runs it again; the annotation is removed. None when the platform is gone."""
    record = await migration.forget_failure(deps.api, deps.live, cr, spec, jobs, logger)
    if record is not None:
        written = await _write_status(deps, cr, {"migration": record})
        if written is None:
            return None
        cr = dataclasses.replace(cr, packed_status=Snapshot.of(written).packed_status)
    await _acknowledge(deps, cr, logger, migration.RETRY_ANNOTATION)
    return cr


async def _acknowledge(deps: Deps, cr: Snapshot, logger: Logger, annotation: str = rollout.ROLLOUT_ANNOTATION) -> None:
    """Remove an annotation the reconcile acted on (kubectl shows it is done), only if it still holds the value
    acted on: one an SRE set meanwhile (abort, then promote) stays for the next reconcile."""
    path = "/metadata/annotations/" + annotation.replace("~", "~0").replace("/", "~1")
    try:
        written = await deps.api.json_patch(cr.ref, [{"op": "test", "path": path, "value": cr.annotations[annotation]},
                                                     {"op": "remove", "path": path}])
    except ApiError as exc:
        if exc.status != 422:  # 422: changed or gone meanwhile, which the next reconcile sees
            logger.warning("Could not remove the %s annotation: %s", annotation, exc.message or exc.reason)
        return
    deps.platforms.wrote(written)


async def _record_migration(deps: Deps, cr: Snapshot, gate: migration.Gate, logger: Logger) -> Snapshot | None:
    """Write a migration Job's outcome (the Migrated condition and the gate's status fields) before the reconcile
    acts on it: the status is the record that outlives the Job, so the workloads move to a migrated image only
    once the record says so. Returns the platform as written, or None when it is gone."""
    old = list(cr.status.get("conditions") or [])
    conditions = merge_conditions(old, {"Migrated": gate.verdict}, cr.generation, deps.now())
    written = await _write_status(deps, cr, {"conditions": conditions, **gate.status})
    if written is None:
        return None
    logger.info("Recorded the migration's outcome: %s", gate.verdict.message)
    # Only the status is taken from the answer: the spec and generation stay those this reconcile works on.
    return dataclasses.replace(cr, packed_status=Snapshot.of(written).packed_status)


async def _report(
    deps: Deps, cr: Snapshot, obs: Observation, logger: Logger, extra: dict[str, Any] | None = None,
    warn_since: list[dict[str, Any]] | None = None,
) -> None:
    """Write the status only when it differs from what the CR already says (``extra``: more status fields).
    ``warn_since``: the conditions that Warning events compare with, when this reconcile wrote some already."""
    platform_names = (f"{cr.name}-learner-api", f"{cr.name}-evaluator")
    current = cr.status
    old_conditions = list(current.get("conditions") or [])
    conditions = merge_conditions(old_conditions, verdicts(obs, *platform_names), cr.generation, deps.now())
    status: dict[str, Any] = {"observedGeneration": cr.generation, "conditions": conditions}
    if not obs.invalid_spec and not obs.paused:
        status["learnerApi"] = summarise(obs.api)
        status["evaluator"] = summarise(obs.evaluator)
    status.update(extra or {})
    unchanged = all(current.get(key) == value for key, value in status.items())
    latest = deps.platforms.get(cr.key)
    if latest is not None and latest.uid != cr.uid:
        return  # deleted and made again under the same name while we worked: not its status
    if not unchanged or (warn_since is not None and warn_since != conditions):
        await _warn_on_transition(deps, cr, old_conditions if warn_since is None else warn_since, conditions, logger)
    if unchanged:
        return
    if await _write_status(deps, cr, status) is not None:
        logger.debug("Status written: %s", {c["type"]: c["reason"] for c in conditions})


async def _write_status(deps: Deps, cr: Snapshot, status: dict[str, Any]) -> dict[str, Any] | None:
    """Patch the status subresource; None when the platform is gone (then it is forgotten)."""
    try:
        written = await deps.api.patch_status(cr.ref, status)
    except ApiError as exc:
        if exc.status != 404:
            raise
        deps.forget_platform(cr.key, cr.uid)  # deleted meanwhile, whatever the watch stream says
        return None
    deps.platforms.wrote(written)
    return written


_QUIET_REASONS = {"RolloutInProgress", "Paused", "DeploymentMissing", "MinimumReplicasUnavailable"}


async def _warn_on_transition(
    deps: Deps, cr: Snapshot, old: list[dict[str, Any]], new: list[dict[str, Any]], logger: Logger,
) -> None:
    """A Kubernetes Event when Ready turns False, or Degraded True, for a reason a person must fix (not for
    a rollout under way), and when a migration fails (the old image may well keep Ready True); once per reason."""
    before = {c.get("type"): c for c in old}
    after = {c.get("type"): c for c in new}
    reasons: dict[str, str] = {}
    for kind, bad in (("Ready", "False"), ("Degraded", "True")):
        now, then = after.get(kind) or {}, before.get(kind) or {}
        if now.get("status") == bad and now.get("reason") not in _QUIET_REASONS and (
            then.get("status") != bad or then.get("reason") != now.get("reason")
        ):
            reasons.setdefault(str(now.get("reason")), str(now.get("message")))
    migrated_before, migrated = before.get("Migrated") or {}, after.get("Migrated") or {}
    if migrated.get("reason") == "MigrationFailed" and migrated_before.get("message") != migrated.get("message"):
        reasons["MigrationFailed"] = str(migrated.get("message"))  # its own words, each new failure
    involved = {"apiVersion": API_VERSION, "kind": "LearnerPlatform", "namespace": cr.namespace,
                "name": cr.name, "uid": cr.uid}
    for reason, message in reasons.items():
        try:
            await deps.api.post_event(involved, "Warning", reason, message)
        except ApiError as exc:  # an event is a courtesy: never fail the reconcile for it
            logger.warning("Could not post an event: %s", exc)
