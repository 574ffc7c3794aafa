"""Which process serves the internal metrics port when a server runs several workers.

Under a multi-worker server every worker tries to bind ``METRICS_INTERNAL_PORT``; one
wins. `sibling_holds_port` tells a sibling worker holding the port apart from a foreign
process (only the former lets start-up go on), and `worker_supervisor` says whether this
process is one of several workers (then the port shows one worker's figures unless
``PROMETHEUS_MULTIPROC_DIR`` aggregates them). Both inspect processes with psutil, so
this module is imported only when an internal port is configured.
"""

from __future__ import annotations

import os

import psutil

__all__ = ["sibling_holds_port", "worker_supervisor"]

_SUPERVISORS = ("uvicorn", "gunicorn")
# What multiprocessing's spawn start method puts on a child's command line.
_SPAWNED = "--multiprocessing-fork"


def _listens_on(process: psutil.Process, port: int) -> bool:
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        for conn in connections
    )


def _identity(process: psutil.Process) -> tuple[str, tuple[str, ...]]:
    command = process.cmdline()
    # Spawned workers differ only in their pipe handles: they are one program.
    return process.exe(), (_SPAWNED,) if _SPAWNED in command else tuple(command)


def _worker_siblings(parent: psutil.Process) -> list[psutil.Process]:
    """The other children of `parent` running the same program as this process.

    Forked workers (gunicorn) share this process's command line; spawned ones (uvicorn
    ``--workers``, hypercorn) are all multiprocessing spawn children. A shell's other
    children (``| tee``) and multiprocessing's helper processes are neither.
    """
    me = psutil.Process()
    mine = _identity(me)
    siblings: list[psutil.Process] = []
    for child in parent.children():
        if child.pid == me.pid:
            continue
        try:
            if _identity(child) == mine:
                siblings.append(child)
        except psutil.Error:
            continue
    return siblings


def _parent() -> psutil.Process | None:
    try:
        parent = psutil.Process().parent()
    except psutil.Error:
        return None
    # Orphaned (or started by init): no supervisor whose workers could share the port.
    return None if parent is None or parent.pid <= 1 else parent


def sibling_holds_port(port: int) -> bool:
    """Whether a *sibling worker* is the process listening on TCP `port`.

    The rule, applied after a bind failed with EADDRINUSE: another child of this
    process's parent, running the same program, listens on `port`, and the parent
    itself does not. Sibling workers
    of uvicorn ``--workers``, gunicorn and hypercorn are children of one supervisor. The
    second condition excludes the server's public port, which the supervisor opens and
    its workers inherit. Any other holder (an unrelated program, another service, a
    stale process) is foreign, and start-up must fail on it.
    """
    parent = _parent()
    if parent is None or _listens_on(parent, port):
        return False
    try:
        siblings = _worker_siblings(parent)
    except psutil.Error:
        return False
    return any(_listens_on(sibling, port) for sibling in siblings)


def worker_supervisor() -> str | None:
    """What runs this process as one of several workers, or None for a single process.

    The rule: the parent process is a uvicorn or gunicorn supervisor (its command line
    runs ``uvicorn``, outside uvicorn's ``--reload`` mode which runs one process, or
    ``gunicorn``, which can add workers at any time), or the parent has another child
    running the same program right now (hypercorn and other servers with a worker pool).
    """
    parent = _parent()
    if parent is None:
        return None
    try:
        command = parent.cmdline()
    except psutil.Error:
        return None
    for token in command[:4]:
        # gunicorn may retitle its master "gunicorn: master [app]".
        name = os.path.basename(token).split(":")[0]
        if name in _SUPERVISORS and not (name == "uvicorn" and "--reload" in command):
            return name
    try:
        has_siblings = bool(_worker_siblings(parent))
    except psutil.Error:
        return None
    return os.path.basename(command[0]) if command and has_siblings else None
