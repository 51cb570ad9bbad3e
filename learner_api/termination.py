"""The one line a service leaves when it refuses to start, where Kubernetes shows it.

The kubelet reads /dev/termination-log (the container's terminationMessagePath) into the pod's
status: `kubectl describe pod` and the operator's conditions can quote why a pod crash-loops without
anyone reading its logs. The file exists only inside a container, so nothing is written elsewhere,
unless TERMINATION_MESSAGE_PATH names another file (a custom terminationMessagePath, or a test).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_PATH = "/dev/termination-log"


def refuse(prog: str, message: str) -> int:
    """Print ``prog: refusing to start: message`` on stderr, record it, and return the exit code (2)."""
    line = f"{prog}: refusing to start: {' '.join(message.split())}"
    print(line, file=sys.stderr)
    record(line)
    return 2


def record(line: str) -> None:
    configured = os.environ.get("TERMINATION_MESSAGE_PATH")
    path = Path(configured or DEFAULT_PATH)
    if not configured and not path.is_file():
        return  # not in a container: never create /dev/termination-log on someone's machine
    try:
        with path.open("w") as out:
            out.write(line[:4000] + "\n")  # the kubelet keeps at most 4096 bytes
    except OSError:
        pass  # a read-only or missing path: stderr (FallbackToLogsOnError) still carries the line
