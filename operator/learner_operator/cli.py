"""`learner-operator`: run the operator, render a CR's children, or print the CRD."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from learner_operator import __version__, yamlio
from learner_operator.builders import (
    AUTOSCALER_KINDS,
    CHILD_KINDS,
    OPTIONAL_KINDS,
    Platform,
    children,
    secret_digest,
    unmet_secret_needs,
    wants_autoscaler,
)
from learner_operator.drift import with_digest
from learner_operator.models import InvalidSpec, ParsedPlatform, parse_object
from learner_operator.models.crd import custom_resource_definition

_PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
#: What `kubectl create secret --from-env-file` accepts as a key (an environment variable name).
_ENV_KEY = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class UsageError(Exception):
    """A mistake in what the user gave us; the message is the one line printed (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in one line; the full usage is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _read_text(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory; give a YAML file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (not UTF-8)") from None


def _read_env_file(path: str) -> dict[str, bytes]:
    """Read like `kubectl create secret generic --from-env-file`: KEY=value lines, the value taken as it
    stands (no quotes removed), `#` comments, a KEY alone taken from the environment when set there."""
    data: dict[str, bytes] = {}
    for number, raw in enumerate(_read_text(path).splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not _ENV_KEY.match(key):
            raise UsageError(f"{path}:{number}: {key!r} is not a valid key; kubectl create secret "
                             "--from-env-file would refuse this file")
        if sep:
            data[key] = value.encode()
        elif key in os.environ:
            data[key] = os.environ[key].encode()
    return data


def platforms(documents: Sequence[Any], namespace: str | None = None) -> list[tuple[ParsedPlatform, str]]:
    """Each document checked as the API server would admit it, with the namespace it lands in: ``-n``,
    else its own metadata.namespace, else ``default``. Raises InvalidSpec naming the document."""
    out: list[tuple[ParsedPlatform, str]] = []
    for index, doc in enumerate(documents, 1):
        which = f"document {index}: " if len(documents) > 1 else ""
        try:
            parsed = parse_object(doc)
        except InvalidSpec as exc:
            raise InvalidSpec(f"{which}{exc}") from None
        if namespace and parsed.namespace and parsed.namespace != namespace:
            raise InvalidSpec(f"{which}{parsed.name}: its metadata.namespace {parsed.namespace!r} is not "
                              f"-n {namespace!r} (kubectl apply refuses that too)")
        out.append((parsed, namespace or parsed.namespace or "default"))
    return out


def _unserved(without_apis: Sequence[str]) -> set[str]:
    """The optional kinds of the API versions given to --without-api."""
    return {kind.kind for kind in CHILD_KINDS if kind.kind in OPTIONAL_KINDS and kind.api_version in without_apis}


def render(documents: Sequence[Any], secret_data: dict[str, bytes] | None,
           namespace: str | None = None, without_apis: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Exactly what the operator would apply for these LearnerPlatforms (InvalidSpec if admission or the
    operator would refuse one), on a cluster that serves every optional kind the specs ask for except
    those of ``without_apis`` (the operator asks the cluster's discovery; render has no cluster to ask)."""
    out: list[dict[str, Any]] = []
    for parsed, target in platforms(documents, namespace):
        uid = parsed.uid or _PLACEHOLDER_UID
        platform = Platform(
            name=parsed.name, namespace=target, uid=uid, spec=parsed.spec,
            secret_hash=secret_digest(uid, secret_data) if secret_data is not None else "unknown",
        )
        out += [with_digest(manifest) for manifest in children(platform, unserved=_unserved(without_apis))]
    return out


def _cmd_render(args: argparse.Namespace) -> int:
    source = "<stdin>" if args.filename == "-" else args.filename
    text = _read_text(args.filename)
    secret = _read_env_file(args.secret_env_file) if args.secret_env_file else None
    try:
        documents = yamlio.load_all(text)
        if not documents:
            raise InvalidSpec("no LearnerPlatform in it (the file is empty)")
        checked = platforms(documents, args.namespace)
        manifests = render(documents, secret, args.namespace, args.without_api)
    except (yamlio.NotYaml, InvalidSpec) as exc:
        raise UsageError(f"{source}: {exc}") from None
    if assumed := sorted({f"{m['apiVersion']} {m['kind']}" for m in manifests if m["kind"] in OPTIONAL_KINDS}):
        apis = " ".join(sorted({a.split()[0] for a in assumed}))
        print(f"notice: {source}: rendered for a cluster that serves {', '.join(assumed)}; where it does not, the "
              f"operator leaves those out and says so in the Degraded condition (--without-api {apis} prints that)",
              file=sys.stderr)
    keda_served = not any(kind.api_version in args.without_api for kind in AUTOSCALER_KINDS)
    for parsed, target in checked:
        if not args.namespace and not parsed.namespace:
            print(f"notice: {source}: {parsed.name} has no metadata.namespace; rendered for namespace "
                  f"{target!r} (kubectl apply would use your context's); pass -n NAMESPACE to choose",
                  file=sys.stderr)
        autoscaler = keda_served and wants_autoscaler(parsed.spec)
        if secret is not None and (unmet := unmet_secret_needs(parsed.spec, secret, autoscaler=autoscaler)):
            print(f"warning: {args.secret_env_file} lacks {'; '.join(map(str, unmet))}: the operator would "
                  f"report SecretReady=False (SecretKeysMissing) for {parsed.name} and create nothing",
                  file=sys.stderr)
    sys.stdout.write(yamlio.dump_all(manifests))
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    text = yamlio.dump(custom_resource_definition())
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _check_cluster_config() -> None:
    """Without a kubeconfig or an in-cluster service account kopf would retry its login every minute with
    a traceback each time: say it once instead."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return
    configured = os.environ.get("KUBECONFIG")
    paths = [p for p in (configured or "").split(os.pathsep) if p] or [str(Path.home() / ".kube" / "config")]
    if not any(Path(p).is_file() for p in paths):
        raise UsageError(f"no cluster to run against: {' nor '.join(paths)} exists and this is not a pod; "
                         "set KUBECONFIG (or try `scripts/run --demo`, which needs no cluster)")


def _cmd_run(args: argparse.Namespace) -> int:
    from learner_operator.runner import run  # imports kopf: only the `run` command needs it

    _check_cluster_config()
    return run(
        namespaces=args.namespace, all_namespaces=args.all_namespaces, peering=args.peering,
        liveness=args.liveness, metrics_port=args.metrics_port,
        lease_namespace=args.lease_namespace if args.leader_election else None, lease_seconds=args.lease_seconds,
        resync_seconds=args.resync_seconds, verbose=args.verbose,
    )


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="learner-operator", description=__doc__)
    top.add_argument("--version", action="version", version=__version__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    run.add_argument("--peering", help="kopf peering object: lets a higher-priority (e.g. a developer's) operator "
                     "pause this one; needs kopf's peering CRDs. Without it the operator runs standalone.")
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=True,
                     help="reconcile only while holding a Lease, so several replicas can run (default: on)")
    run.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                     help="namespace of the leader Lease (default: $POD_NAMESPACE, else default)")
    run.add_argument("--lease-seconds", type=int, default=15,
                     help="how long a crashed leader's Lease blocks a new leader (renewed every third of it)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    run.add_argument("--metrics-port", type=int, default=9090, help="port of the operator's /metrics")
    run.add_argument("--resync-seconds", type=float, default=300.0, help="full resync period")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)

    rend = sub.add_parser("render", help="print the manifests a LearnerPlatform turns into (no cluster)")
    rend.add_argument("-f", "--filename", required=True, help="a LearnerPlatform YAML file, or - for stdin")
    rend.add_argument("-n", "--namespace", help="the namespace to render for (default: the object's own, else "
                      "'default', with a notice)")
    rend.add_argument("--secret-env-file", help="the env file the Secret is made from: the rollout hash, and a "
                      "warning for keys the platform needs that it lacks")
    rend.add_argument("--without-api", action="append", default=[], metavar="GROUP/VERSION",
                      choices=sorted({kind.api_version for kind in CHILD_KINDS if kind.kind in OPTIONAL_KINDS}),
                      help="render for a cluster that does not serve this add-on API (repeatable): the operator "
                      "asks discovery, render assumes every optional API the spec uses is served unless told so")
    rend.set_defaults(func=_cmd_render)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the models")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.set_defaults(func=_cmd_crd)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"learner-operator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValidationError) as exc:
        print(f"learner-operator {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the net under render and crd: one line, never a traceback (a bug to report)
        if args.command == "run":
            raise
        print(f"learner-operator {args.command}: error: internal error, please report it: {type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
