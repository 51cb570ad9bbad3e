"""What the operator knows of Secrets, without keeping any value.

The Secrets' informer is metadata only: it tells which resourceVersion each Secret is at. The last
read of a referenced Secret leaves the names of its non-empty keys and, per platform, the salted
digest that rolls the pods (``builders.secret_digest``). While the Secret's resourceVersion stays
the same, a reconcile needs neither a GET nor the values: a resync at rest reads nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

Where = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass
class _Read:
    resource_version: str
    present: frozenset[str]
    digests: dict[str, str] = dataclasses.field(default_factory=dict)  # platform uid -> digest


class SecretCache:
    def __init__(self) -> None:
        self._versions: dict[Where, str] = {}
        self._reads: dict[Where, _Read] = {}

    # -- fed by the Secrets' informer ---------------------------------------------------------------

    def changed(self, where: Where, resource_version: str | None) -> bool:
        """The informer's word on a Secret (None: deleted); True if it is news."""
        before = self._versions.get(where)
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

    def lookup(self, where: Where, uid: str) -> tuple[frozenset[str], str] | None:
        """The key names and this platform's digest, if the last read is still the Secret's current version."""
        read = self._reads.get(where)
        if read is None or self._versions.get(where) != read.resource_version or uid not in read.digests:
            return None
        return read.present, read.digests[uid]

    def store(self, where: Where, resource_version: str, present: frozenset[str], uid: str, digest: str) -> None:
        read = self._reads.get(where)
        if read is None or read.resource_version != resource_version:
            read = self._reads[where] = _Read(resource_version, present)
        read.digests[uid] = digest

    def forget_platform(self, uid: str) -> None:
        for read in self._reads.values():
            read.digests.pop(uid, None)
