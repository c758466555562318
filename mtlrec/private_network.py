"""Run a local job in a private network namespace, so its servers answer only on loopback.

Ray 2.55.1's core processes (GCS, raylet, every core worker, the driver's included) listen
on all interfaces, hard-coded, with no setting to change it (docs/cluster.md). A local
training run needs no network beyond loopback when its lake and run directory are local,
so ``jobs.train`` re-executes itself under ``unshare --user --map-root-user --net``: an
unprivileged user namespace owning a new network namespace that holds only ``lo``. The
re-executed process brings ``lo`` up before anything else; Ray then starts inside, and
"all interfaces" means loopback. Files keep the invoking user as owner (the namespace maps
that user to its root). Where namespaces are not available (not Linux, no ``unshare``,
a kernel that forbids unprivileged user namespaces) the caller logs why and runs as before.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from typing import NoReturn

INSIDE_FLAG = "MTLREC_PRIVATE_NETWORK"
"""Set in the re-executed process's environment; it also stops a second re-execution."""
_UNSHARE_ARGS = ("--user", "--map-root-user", "--net")
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")  # struct ifreq on Linux: name, then the flags of the union


def inside() -> bool:
    """True in a process that ``reexec`` started."""
    return os.environ.get(INSIDE_FLAG) == "1"


def unavailable_reason() -> str | None:
    """Why this machine cannot give a process a private network namespace, or None."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "the unshare program (util-linux) is not installed"
    try:
        probe = subprocess.run(
            [unshare, *_UNSHARE_ARGS, "true"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare {' '.join(_UNSHARE_ARGS)} could not run: {exc}"
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        return f"unshare {' '.join(_UNSHARE_ARGS)} is not permitted here: {detail[0]}"
    return None


def reexec(module: str, argv: list[str]) -> NoReturn:
    """Replace this process with ``python -m module *argv`` in a private network namespace.

    The process keeps its pid (``unshare`` execs in place), so signals and process-group
    kills reach the job exactly as before.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError(unavailable_reason() or "unshare not found")
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, INSIDE_FLAG: "1"}
    os.execve(unshare, [unshare, *_UNSHARE_ARGS, sys.executable, "-m", module, *argv], env)


def bring_loopback_up() -> None:
    """A new network namespace starts with ``lo`` down; nothing can connect until it is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ.pack(b"lo", 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, request))
        if not flags & _IFF_UP:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def interfaces(pid: int | str = "self") -> list[str]:
    """Names of the network interfaces a process sees (``/proc/<pid>/net/dev``)."""
    with open(f"/proc/{pid}/net/dev") as handle:
        return [line.split(":", 1)[0].strip() for line in handle.readlines()[2:]]
