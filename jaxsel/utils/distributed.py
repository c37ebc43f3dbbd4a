"""Multi-process JAX: :func:`initialize` on each host, :func:`launch_local` to try it on one machine.

One JAX process drives the devices of one host; a job over several hosts is several processes
that meet at a coordinator (``host:port`` of process 0) through :func:`jax.distributed.initialize`.
After that ``jax.devices()`` lists every process's devices, a mesh may span them, and ``jit`` /
``shard_map`` programs run their collectives across processes (on the CPU backend over TCP with
gloo). Every process must run the same program in the same order: a collective that one process
never reaches blocks the others.

- :func:`initialize` -- the one call a script makes before any other JAX call. Its arguments
  default to the environment variables :data:`ENV_COORDINATOR`, :data:`ENV_NUM_PROCESSES` and
  :data:`ENV_PROCESS_ID` (what :func:`launch_local`, or a user's own launcher, sets); with none of
  them JAX detects the cluster itself (SLURM, TPU pods, Open MPI, ...).
- :func:`launch_local` -- starts ``n`` such processes on 127.0.0.1 with virtual CPU devices, waits
  with a deadline and turns any failure or hang into one :class:`DistributedRunError` naming each
  failed process, its exit code and the end of its stderr. Tests and laptops use it; a real cluster
  runs the same script once per host with the variables set by hand or by the scheduler.

Failure model: a process that dies stops sending heartbeats to the coordinator; after
``heartbeat_timeout_seconds`` JAX aborts the others (a fatal error naming the "unhealthy" tasks,
nonzero exit code) instead of letting them wait forever in a collective. The launcher's deadline
covers everything else (a process stuck before it reaches the coordinator, a deadlocked program).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import IO

ENV_COORDINATOR = "JAXSEL_COORDINATOR"
"""``host:port`` of process 0's coordinator service."""
ENV_NUM_PROCESSES = "JAXSEL_NUM_PROCESSES"
"""Total number of processes in the job."""
ENV_PROCESS_ID = "JAXSEL_PROCESS_ID"
"""This process's id, ``0 <= id < num_processes``; process 0 hosts the coordinator."""

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_STDERR_TAIL_LINES = 20
_TERM_GRACE_S = 2.0


class DistributedRunError(RuntimeError):
    """A :func:`launch_local` run failed: a process exited nonzero or the deadline passed.

    Attributes:
      failures: one :class:`ProcessFailure` per failed process, by process id.
      pids: the operating-system pids of every process started (all reaped when this is raised).
    """

    def __init__(
        self, message: str, failures: Sequence[ProcessFailure] = (), pids: Sequence[int] = ()
    ):
        super().__init__(message)
        self.failures = tuple(failures)
        self.pids = tuple(pids)


@dataclasses.dataclass(frozen=True)
class ProcessFailure:
    """Why one process of a :func:`launch_local` run failed."""

    process_id: int
    returncode: int | None
    """The exit code (negative: killed by that signal); None if the launcher stopped it (deadline
    passed, or another process had failed)."""
    reason: str
    stderr_tail: str


# ----------------------------------------------------------------------------- initialize
def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator_address must be 'host:port', got {address!r}")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 60,
    heartbeat_timeout_seconds: int = 10,
    shutdown_timeout_seconds: int = 60,
) -> None:
    """Joins this process to a multi-process JAX job; call it before any other JAX call.

    Each argument left None is read from its environment variable (:data:`ENV_COORDINATOR`,
    :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`), so one script runs unchanged under
    :func:`launch_local`, a hand-written launcher or a scheduler. Either all three end up set or
    none: with none, :func:`jax.distributed.initialize` detects the cluster (SLURM, TPU pods, Open
    MPI, ...); a partial set is almost always a launcher bug, so it raises instead of guessing.

    On the CPU backend the cross-process collectives use gloo (selected here, before the backend
    starts; XLA's CPU client has no cross-process collectives otherwise).

    The timeouts are shorter than JAX's defaults (300 s, 100 s, 300 s) so that a dead peer
    surfaces as an error within seconds: ``initialization_timeout`` bounds the wait for every
    process to reach the coordinator, ``heartbeat_timeout_seconds`` how long a silent process
    counts as alive (after that JAX aborts the others), ``shutdown_timeout_seconds`` the exit
    barrier. Raise them for slow-starting clusters.

    Raises:
      ValueError: inconsistent or malformed arguments (naming the values), before JAX is touched.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    for name, value in (
        ("initialization_timeout", initialization_timeout),
        ("heartbeat_timeout_seconds", heartbeat_timeout_seconds),
        ("shutdown_timeout_seconds", shutdown_timeout_seconds),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (seconds), got {value!r}")
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    missing = [k for k, v in given.items() if v is None]
    if 0 < len(missing) < 3:
        raise ValueError(
            f"initialize needs all of coordinator_address, num_processes and process_id or none "
            f"(cluster auto-detection); got {given} (missing: {', '.join(missing)}; the "
            f"environment variables are {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
        )
    if not missing:
        assert coordinator_address is not None and num_processes is not None
        assert process_id is not None
        _check_address(coordinator_address)
        if isinstance(num_processes, bool) or not isinstance(num_processes, int):
            raise ValueError(f"num_processes must be an int, got {num_processes!r}")
        if num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {num_processes}")
        if isinstance(process_id, bool) or not isinstance(process_id, int):
            raise ValueError(f"process_id must be an int, got {process_id!r}")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must satisfy 0 <= process_id < num_processes, got "
                f"process_id={process_id}, num_processes={num_processes}"
            )

    import jax

    if jax.distributed.is_initialized():
        raise RuntimeError("jax.distributed is already initialized in this process")
    platforms = str(jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", ""))
    if platforms == "" or "cpu" in platforms.split(","):
        # A CPU-only run needs gloo for cross-process collectives; on GPU/TPU hosts it only
        # affects the (unused) CPU client. Must be set before the backend is created.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
    )


# ----------------------------------------------------------------------------- launch_local
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _child_xla_flags(parent: str, devices_per_process: int) -> str:
    """``parent``'s XLA flags with any device-count flag replaced (not appended to) by ours."""
    kept = [f for f in parent.split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    return " ".join([*kept, f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, WITHOUT reaping it: while its zombie stays, its pid (the id of
    its process group) cannot be reused, so killing that group later cannot hit a stranger."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped elsewhere
        return True
    return info is not None and info.si_pid != 0


def _exit_code(proc: subprocess.Popen[bytes]) -> int:
    """The exit status of an exited, unreaped ``proc`` (negative: the signal that killed it)."""
    if proc.returncode is not None:
        return proc.returncode
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    assert info is not None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Sends ``sig`` to the process group led by ``proc`` (started in its own session, not yet
    reaped)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = _TERM_GRACE_S) -> None:
    """SIGTERM to every group whose leader still runs, SIGKILL to every group after at most
    ``grace_s`` (also the groups of leaders that exited: a grandchild may linger), then reaps."""
    for p in procs:
        if not _has_exited(p):
            _kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not all(_has_exited(p) for p in procs):
        time.sleep(0.02)
    for p in procs:
        _kill_group(p, signal.SIGKILL)
    for p in procs:
        p.wait()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _tail(f: IO[bytes], n_lines: int = _STDERR_TAIL_LINES) -> str:
    f.seek(0)
    lines = f.read().decode(errors="replace").splitlines()
    return "\n".join(lines[-n_lines:])


def launch_local(
    argv: Sequence[str],
    n_processes: int,
    *,
    devices_per_process: int = 1,
    timeout_s: float = 120,
    env: Mapping[str, str] | None = None,
    failure_grace_s: float = 0.0,
) -> list[str]:
    """Runs ``python *argv`` as ``n_processes`` JAX processes on 127.0.0.1; returns their stdouts.

    Each process gets :data:`ENV_COORDINATOR` (a free port on 127.0.0.1), :data:`ENV_NUM_PROCESSES`
    and :data:`ENV_PROCESS_ID` -- so the script's :func:`initialize` joins them -- plus
    ``JAX_PLATFORMS=cpu`` and ``XLA_FLAGS`` with ``devices_per_process`` virtual CPU devices (this
    replaces a device count inherited from the caller, e.g. a test session's). ``env`` is added on
    top of ``os.environ`` (it may override ``JAX_PLATFORMS``, not the launcher's variables).

    Each process runs in its own process group, so cleanup also reaches anything it started.
    stdout/stderr go to temporary files, not pipes: a chatty process cannot block on a full pipe
    while the launcher waits on another.

    Args:
      argv: arguments after the interpreter, e.g. ``["scripts/scaleout_run.py", "--task", "sac"]``.
      n_processes: number of processes (>= 1).
      devices_per_process: virtual CPU devices per process (>= 1).
      timeout_s: overall deadline for the whole run, from the first start.
      env: extra environment variables.
      failure_grace_s: after the first process fails, how long the others may keep running to
        fail (or finish) by themselves -- e.g. to record JAX's heartbeat abort -- before they are
        killed. 0 kills them at once.

    Returns:
      Each process's stdout, by process id.

    Raises:
      ValueError: bad arguments (naming the argument).
      DistributedRunError: a process exited nonzero, or the deadline passed. The message names
        each failed process id with its exit code (or "timed out after X s") and the last lines of
        its stderr; processes killed by the launcher after another's failure are listed as such.
        Every process has been stopped and reaped by then.
    """
    if isinstance(argv, str) or not all(isinstance(a, str) for a in argv) or not argv:
        raise ValueError(f"argv must be a non-empty list of str, got {argv!r}")
    for name, value in (("n_processes", n_processes), ("devices_per_process", devices_per_process)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if not failure_grace_s >= 0:
        raise ValueError(f"failure_grace_s must be >= 0, got {failure_grace_s!r}")

    base = dict(os.environ)
    base["JAX_PLATFORMS"] = "cpu"
    base.update(env or {})
    base["XLA_FLAGS"] = _child_xla_flags(base.get("XLA_FLAGS", ""), devices_per_process)
    base[ENV_COORDINATOR] = f"127.0.0.1:{free_port()}"
    base[ENV_NUM_PROCESSES] = str(n_processes)

    procs: list[subprocess.Popen[bytes]] = []
    outs: list[IO[bytes]] = []
    errs: list[IO[bytes]] = []
    try:
        start = time.monotonic()
        for i in range(n_processes):
            outs.append(tempfile.TemporaryFile())
            errs.append(tempfile.TemporaryFile())
            procs.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    env={**base, ENV_PROCESS_ID: str(i)},
                    stdin=subprocess.DEVNULL,
                    stdout=outs[i],
                    stderr=errs[i],
                    start_new_session=True,
                )
            )
        deadline = start + timeout_s
        first_failure: float | None = None
        while True:
            exited = [_has_exited(p) for p in procs]
            now = time.monotonic()
            if all(exited):
                break
            if first_failure is None and any(_exit_code(p) for p, e in zip(procs, exited) if e):
                first_failure = now
            if first_failure is not None and now >= first_failure + failure_grace_s:
                break
            if now >= deadline:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        exited = [_has_exited(p) for p in procs]
        _stop_all(procs)
        codes = [p.returncode if e else None for p, e in zip(procs, exited)]
        failed_early = any(c not in (None, 0) for c in codes)

        failures = []
        for i, c in enumerate(codes):
            if c == 0:
                continue
            if c is not None and c < 0:
                reason = f"exit code {c} (killed by {_signal_name(-c)})"
            elif c is not None:
                reason = f"exit code {c}"
            elif failed_early:
                reason = "killed by the launcher after another process failed"
            else:
                reason = f"timed out after {elapsed:.1f} s (deadline {timeout_s} s)"
            failures.append(ProcessFailure(i, c, reason, _tail(errs[i])))
        if failures:
            parts = [
                f"{len(failures)} of {n_processes} processes failed running "
                f"{' '.join([os.path.basename(sys.executable), *argv])}:"
            ]
            for f in failures:
                parts.append(f"--- process {f.process_id}: {f.reason}; stderr (last lines):")
                parts.append(f.stderr_tail or "(empty)")
            raise DistributedRunError("\n".join(parts), failures, [p.pid for p in procs])
        result = []
        for f in outs:
            f.seek(0)
            result.append(f.read().decode(errors="replace"))
        return result
    finally:
        _stop_all(procs)
        for f in (*outs, *errs):
            f.close()
