"""The LearnerPlatforms this operator knows, as last seen on the watch stream or written by itself."""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from learner_operator.kube import ResourceRef
from learner_operator.models import API_VERSION, PLURAL
from learner_operator.models.v1alpha1 import SecretRef

Key = tuple[str, str]  # (namespace, name)
#: For how long a platform's first sighting (a watch event or a listing) stands for its existence.
FRESH_SECONDS = 10.0
_DEFAULT_SECRET = SecretRef().name
#: Annotations that ask the operator to act (a change of one triggers a reconcile).
COMMAND_ANNOTATIONS = frozenset({"learner.dev/rollout", "learner.dev/retry-migration"})


def _plain(value: Any) -> Any:
    """Deep-copy kopf's body views into plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _newer(a: str, b: str) -> bool:
    try:
        return int(a) > int(b)
    except ValueError:
        return a != b


def _pack(value: Any) -> bytes:
    return zlib.compress(orjson.dumps(value), 1)  # order kept: it reaches YAML


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """One platform as last seen. Spec and status are kept packed (compact JSON, zlib): a thousand
    platforms' nested dicts would otherwise be the operator's largest memory; a reconcile unpacks them."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    packed_spec: bytes
    packed_status: bytes
    secret_name: str
    deleting: bool = False
    #: The learner.dev/ annotations an SRE sets to step in (learner.dev/rollout, learner.dev/retry-migration).
    commands: tuple[tuple[str, str], ...] = ()

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.commands)

    @property
    def spec(self) -> Any:
        return orjson.loads(zlib.decompress(self.packed_spec))

    @property
    def status(self) -> dict[str, Any]:
        loaded = orjson.loads(zlib.decompress(self.packed_status))
        return loaded if isinstance(loaded, dict) else {}

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def ref(self) -> ResourceRef:
        return ResourceRef(API_VERSION, PLURAL, self.namespace, self.name)

    def asks_more_than(self, reconciled: Snapshot) -> bool:
        """Whether this newer sighting holds a change that asks for a reconcile beyond ``reconciled``'s."""
        return (self.uid, self.generation, self.deleting, self.commands) != (
            reconciled.uid, reconciled.generation, reconciled.deleting, reconciled.commands)

    @classmethod
    def of(cls, body: Any) -> Snapshot:
        meta = body.get("metadata") or {}
        spec = _plain(body.get("spec"))
        ref = spec.get("secretRef") if isinstance(spec, dict) and isinstance(spec.get("secretRef"), dict) else {}
        return cls(
            namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0), resource_version=str(meta.get("resourceVersion", "")),
            packed_spec=_pack(spec), packed_status=_pack(_plain(body.get("status")) or {}),
            secret_name=str((ref or {}).get("name") or _DEFAULT_SECRET),
            deleting=bool(meta.get("deletionTimestamp")),
            commands=tuple(sorted((str(k), str(v)) for k, v in (meta.get("annotations") or {}).items()
                                  if k in COMMAND_ANNOTATIONS)),
        )


class Platforms:
    def __init__(self, fresh_seconds: float = FRESH_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_key: dict[Key, Snapshot] = {}
        # uid -> when first seen, for platforms not reconciled since (oldest first)
        self._new: dict[str, float] = {}
        self._fresh_seconds = fresh_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._by_key)

    def known(self) -> list[Key]:
        return list(self._by_key)

    def get(self, key: Key) -> Snapshot | None:
        return self._by_key.get(key)

    def observe(self, body: Any) -> bool:
        """Store what the watch stream says; True when it asks for a reconcile (not a mere status change)."""
        new = Snapshot.of(body)
        old = self._by_key.get(new.key)
        if old is not None and old.uid == new.uid and not _newer(new.resource_version, old.resource_version):
            return False  # older than what we already know (e.g. than our own status write)
        self._by_key[new.key] = new
        if old is None or old.uid != new.uid:
            self._seen_new(new.uid)
        return (old is None or old.uid != new.uid or old.generation != new.generation
                or old.packed_spec != new.packed_spec or old.deleting != new.deleting or old.commands != new.commands)

    def wrote(self, body: Any) -> None:
        """Our own write's result: newer than anything the watch stream has shown so far."""
        new = Snapshot.of(body)
        old = self._by_key.get(new.key)
        if old is None or old.uid != new.uid or _newer(new.resource_version, old.resource_version):
            self._by_key[new.key] = new

    def _seen_new(self, uid: str) -> None:
        now = self._clock()
        while self._new and (oldest := next(iter(self._new.items())))[1] < now - self._fresh_seconds:
            del self._new[oldest[0]]
        self._new[uid] = now

    def first_sight(self, uid: str) -> bool:
        """Is this its first reconcile, moments after the platform was first seen? (True once at most.)

        A platform known for seconds only, from a watch event or a listing, exists as surely as a GET
        would say (which can be outdated by the time its answer arrives, too). Should the watch have
        missed its deletion meanwhile, one round of children is created for nothing and collected by the
        garbage collector; the reconciles their events bring read the platform before writing.
        """
        seen = self._new.pop(uid, None)
        return seen is not None and self._clock() - seen <= self._fresh_seconds

    def forget(self, key: Key) -> Snapshot | None:
        if (known := self._by_key.get(key)) is not None:
            self._new.pop(known.uid, None)
        return self._by_key.pop(key, None)

    def forget_if(self, key: Key, uid: str) -> None:
        """Forget the platform under ``key`` if it is still the one with ``uid`` (not a new one of that name)."""
        if (known := self._by_key.get(key)) is not None and known.uid == uid:
            del self._by_key[key]
            self._new.pop(uid, None)

    def by_uid(self) -> dict[str, Key]:
        return {snap.uid: key for key, snap in self._by_key.items()}

    def conditions(self) -> list[tuple[str, str, list[dict[str, Any]]]]:
        return [(ns, name, list(snap.status.get("conditions") or [])) for (ns, name), snap in self._by_key.items()]

    def referencing_secret(self, namespace: str, name: str) -> list[Key]:
        return [key for key, snap in self._by_key.items() if key[0] == namespace and snap.secret_name == name]
