"""All Kubernetes API I/O of the operator's own writes and reads (kopf does the watching).

One seam: :class:`KubeApi` is what the reconciler talks to; tests run it against the emulator over
HTTP exactly as production runs it against a real API server.
"""

from learner_operator.kube.client import ApiError, KubeApi, NotLeading, RequestCounter
from learner_operator.kube.discovery import Discovery
from learner_operator.kube.paths import ResourceRef, ref_of

__all__ = ["ApiError", "Discovery", "KubeApi", "NotLeading", "RequestCounter", "ResourceRef", "ref_of"]
