"""What the operator knows of Secrets, keeping values only for seconds.

The Secrets' informer is metadata only: it tells which resourceVersion each Secret is at. The last
read of a referenced Secret leaves the names of its non-empty keys and, per platform, the salted
digest that rolls the pods (``builders.secret_digest``). While the Secret's resourceVersion stays
the same, a reconcile needs neither a GET nor the values: a resync at rest reads nothing.

The digest is salted with the platform's uid, so a platform new to a Secret needs its values. A
burst of new platforms sharing one Secret (a hundred created at once) would read it once each;
instead the wired values of the last read are kept for ``hold`` seconds (never logged, never
written anywhere) and dropped at the first look after that, or when the Secret changes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

Where = tuple[str, str]  # (namespace, name)
#: Seconds the values of a read stay usable for other platforms' digests.
HOLD_VALUES = 10.0


@dataclasses.dataclass
class _Read:
    resource_version: str
    present: frozenset[str]
    digests: dict[str, str] = dataclasses.field(default_factory=dict)  # platform uid -> digest
    #: The values the digests are made of, until ``until`` (monotonic seconds); then None.
    values: Mapping[str, bytes] | None = None
    until: float = 0.0


class SecretCache:
    def __init__(self, hold: float = HOLD_VALUES, clock: Callable[[], float] = time.monotonic) -> None:
        self._versions: dict[Where, str] = {}
        self._reads: dict[Where, _Read] = {}
        self._hold = hold
        self._clock = clock

    # -- fed by the Secrets' informer ---------------------------------------------------------------

    def changed(self, where: Where, resource_version: str | None) -> bool:
        """The informer's word on a Secret (None: deleted); True if it is news."""
        before = self._versions.get(where)
        if (read := self._reads.get(where)) is not None and read.resource_version != resource_version:
            read.values = None
        if resource_version is None:
            self._versions.pop(where, None)
            self._reads.pop(where, None)
        else:
            self._versions[where] = resource_version
        return before != resource_version

    def listed(self, versions: Mapping[Where, str], namespace: str | None = None) -> set[Where]:
        """A fresh listing of every Secret in ``namespace`` (None: all); returns those that changed or vanished."""
        mine = {where: version for where, version in self._versions.items()
                if namespace is None or where[0] == namespace}
        changed = {where for where in versions.keys() | mine.keys() if versions.get(where) != mine.get(where)}
        for where in mine.keys() - versions.keys():
            self._versions.pop(where, None)
            self._reads.pop(where, None)
        self._versions.update(versions)
        return changed

    # -- used by reconciles ---------------------------------------------------------------------------

    def lookup(self, where: Where, uid: str, digest_of: Callable[[Mapping[str, bytes]], str] | None = None,
               ) -> tuple[frozenset[str], str] | None:
        """The key names and this platform's digest, if the last read is still the Secret's current version.
        A platform without a digest yet gets one from ``digest_of`` while the read's values are held."""
        self._drop_expired()
        read = self._reads.get(where)
        if read is None or self._versions.get(where) != read.resource_version:
            return None
        if uid not in read.digests:
            if read.values is None or digest_of is None:
                return None
            read.digests[uid] = digest_of(read.values)
        return read.present, read.digests[uid]

    def store(self, where: Where, resource_version: str, present: frozenset[str], uid: str, digest: str,
              values: Mapping[str, bytes] | None = None) -> None:
        """The result of a read; ``values`` (only what the digest is made of) are held for a few seconds."""
        read = self._reads.get(where)
        if read is None or read.resource_version != resource_version:
            read = self._reads[where] = _Read(resource_version, present)
        read.digests[uid] = digest
        if values is not None and self._hold > 0:
            read.values, read.until = dict(values), self._clock() + self._hold

    def holding_values(self) -> int:
        """How many reads still hold values (tests: none once ``hold`` has passed)."""
        self._drop_expired()
        return sum(1 for read in self._reads.values() if read.values is not None)

    def _drop_expired(self) -> None:
        now = self._clock()
        for read in self._reads.values():
            if read.values is not None and read.until <= now:
                read.values = None

    def forget_platform(self, uid: str) -> None:
        for read in self._reads.values():
            read.digests.pop(uid, None)
