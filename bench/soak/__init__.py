"""Chaos soak: the whole system on this machine under steady load and overlapping random faults.

    .venv/bin/python -m bench.soak --minutes 60 --seed 7

Starts, all on loopback and all its own:
- a throwaway PostgreSQL (initdb + pg_ctl under a temporary folder, on a free port) and a throwaway
  Redis (redis-server, append-only file fsynced on every write: a managed Redis does not lose what it
  acknowledged), so that it may kill -9, freeze (SIGSTOP) and restart them. The shared 5432/6379 are
  never touched;
- the Kubernetes API: the tests' emulator (in this process), or a real control plane from envtest's
  binaries when KUBEBUILDER_ASSETS names them or with ``--kube real`` (bench/soak/kube.py), with 3
  `learner-operator run` replicas electing a leader through the Lease;
- 2 `learner-api serve` and 2 `learner-api evaluator` processes.

Load (bounded): progress batches from learners of 3 tenants, retried with the same event ids as real
clients do; purchases (checkout with an Idempotency-Key, then a signed payment webhook, both retried with
the same key / event id); LearnerPlatform churn in 3 namespaces (create, image tag, autoscaling, evaluator
on/off, pause, delete). The soak plays the Job controller, the Deployment controller and the HPA.

Faults, drawn from ``--seed``, several at once: kill -9 of the operator's leader or a follower, of a
learner-api or evaluator process; SIGSTOP/SIGCONT of PostgreSQL, Redis or an operator replica; restart of
PostgreSQL or Redis; the API server dropping every watch, restarting (429, then 410 Gone) or away for
10-60 s (503) (a real kube-apiserver: stopped with SIGTERM or kill -9 and started again, or away 10-60 s);
a child deleted or edited by someone else. With ``--redis cluster``, a six-node Redis
Cluster instead of the one server, and its faults: a coordinated failover, a master killed or frozen
around the node timeout, a slot moved under load. The faults are planned from the seed alone, before the
run (``fault_plan`` in the report): the same seed replays the same plan.

Everything is written to a history (JSONL), then checked: every progress event answered 202 is stored
exactly once, none dead-lettered; at most one order per Idempotency-Key, each confirmed payment fulfilled
once; every LearnerPlatform converged within 60 s of the last fault, no child of a deleted one
re-created; 0 operator writes for ``--quiet-seconds`` at rest; every process under its RSS bound and
ready at the end; Redis keys bounded. The report names every broken invariant with the seed to replay it;
the exit status is 1 when one broke. Every loop is bounded in count and time; all it started is stopped
and its folder removed (kept when an invariant broke, or with ``--keep``).
"""
