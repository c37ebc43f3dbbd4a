"""Multi-process run of a sequence-sharded TokenSelect decode step or of SAC seeds over devices.

Run once per process (one process per host on a real cluster), e.g. on two hosts::

    # host A (process 0, the coordinator)     # host B
    JAXSEL_COORDINATOR=hostA:8476 \\           JAXSEL_COORDINATOR=hostA:8476 \\
    JAXSEL_NUM_PROCESSES=2 \\                  JAXSEL_NUM_PROCESSES=2 \\
    JAXSEL_PROCESS_ID=0 \\                     JAXSEL_PROCESS_ID=1 \\
    python scripts/scaleout_run.py --task decode --out decode.json

or on one machine through the launcher (two processes with two virtual CPU devices each)::

    python -c "from jaxsel.utils.distributed import launch_local; print(launch_local(
        ['scripts/scaleout_run.py', '--task', 'sac', '--out', 'sac.json'], 2,
        devices_per_process=2))"

Under a scheduler JAX detects itself (SLURM, TPU pods, Open MPI, ...) pass ``--distributed`` and no
variables. With neither, it runs as one process over its local devices: the reference answer.

The mesh is 1-D over ALL global devices. Tasks:

- ``decode``: fixed data (NumPy seed :data:`DECODE_SEED`, shapes below), the KV cache sharded along
  the sequence over mesh axis ``seq``; one ``shard_map`` step of
  :func:`jaxsel.attention.sequence.sequence_select` and
  :func:`jaxsel.attention.sequence.sequence_sparse_attention` at each of :data:`KV_LENS` (a traced
  ``kv_len``: two sparse steps and one dense-equivalent one, same compiled program).
- ``sac``: :data:`SAC_SEEDS` seeds of the tiny SAC config on Pendulum, vmapped, the seeds sharded
  over mesh axis ``seeds``; the results are all-gathered to every process.

Process 0 writes ``--out`` (JSON); every process prints one summary line. ``--die-at-step K`` makes
process 1 exit (code 3) right before its K-th multi-process call: the others must then fail within
the heartbeat timeout instead of hanging.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxsel.utils import distributed, flag, parse_config

# tests/utils/test_distributed.py regenerates the decode data from the same constants.
DECODE_SEED = 0
HQ, HKV, HEAD_DIM, N_TOKENS = 8, 2, 16, 512
KV_LENS = (500, 300, 40)
TOP_K, N_SINK, N_LOCAL = 40, 4, 8
SAC_SEEDS = 4
DIE_EXIT_CODE = 3


def decode_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``q [HQ, d]``, ``k, v [N, HKV, d]`` float32 from ``default_rng(DECODE_SEED)``, in that order."""
    rng = np.random.default_rng(DECODE_SEED)
    q = rng.standard_normal((HQ, HEAD_DIM), dtype=np.float32)
    k = rng.standard_normal((N_TOKENS, HKV, HEAD_DIM), dtype=np.float32)
    v = rng.standard_normal((N_TOKENS, HKV, HEAD_DIM), dtype=np.float32)
    return q, k, v


@dataclasses.dataclass(frozen=True)
class ScaleoutConfig:
    task: str = flag(dataclasses.MISSING, "what to run", choices=("decode", "sac"))
    out: str = flag(dataclasses.MISSING, "JSON written by process 0")
    vote_pool: int = flag(1, "decode: TokenSelect vote_pool")
    distributed: bool = flag(
        False, "join a multi-process job even without JAXSEL_* variables (cluster auto-detection)"
    )
    die_at_step: int = flag(
        0, "process 1 exits with code 3 right before its K-th multi-process call (tests)"
    )
    heartbeat_timeout: int = flag(10, "seconds (see initialize)")
    init_timeout: int = flag(60, "seconds (see initialize)")

    def __post_init__(self) -> None:
        if self.task not in ("decode", "sac"):
            raise ValueError(f"task must be 'decode' or 'sac', got {self.task!r}")
        if self.vote_pool < 1:
            raise ValueError(f"vote_pool must be >= 1, got {self.vote_pool}")
        if self.die_at_step < 0:
            raise ValueError(f"die_at_step must be >= 0, got {self.die_at_step}")
        for name in ("heartbeat_timeout", "init_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (seconds), got {getattr(self, name)}")


def parse_args(argv: list[str] | None = None) -> ScaleoutConfig:
    return parse_config(ScaleoutConfig, argv, description=__doc__)


class Steps:
    """Counts multi-process calls; process 1 exits before call ``die_at`` (0: never)."""

    def __init__(self, die_at: int):
        self.count = 0
        self.die_at = die_at

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        import jax

        self.count += 1
        if self.count == self.die_at and jax.process_index() == 1:
            print(
                f"scaleout_run: process 1 exiting (code {DIE_EXIT_CODE}) before step {self.count}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(DIE_EXIT_CODE)
        return fn(*args)


def _global(x: np.ndarray, sharding: Any) -> Any:
    """A global array from host data every process holds in full (``device_put`` cannot place
    host data on another process's devices)."""
    import jax

    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _mesh(axis: str) -> Any:
    """A 1-D mesh over every process's devices. Auto (not Explicit, make_mesh's default) axes:
    the SAC loop's buffer scatter needs the compiler to propagate the seed sharding itself."""
    import jax

    return jax.make_mesh((jax.device_count(),), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def _replicated_value(x: Any) -> np.ndarray:
    """A replicated global array's value, read from this process's first shard."""
    return np.asarray(x.addressable_data(0))


def run_decode(args: ScaleoutConfig, steps: Steps) -> dict[str, Any]:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxsel.attention.sequence import sequence_select, sequence_sparse_attention

    n_dev = jax.device_count()
    if N_TOKENS % n_dev:
        raise SystemExit(f"decode needs the device count ({n_dev}) to divide N={N_TOKENS}")
    mesh = _mesh("seq")
    rep, seq = NamedSharding(mesh, P()), NamedSharding(mesh, P("seq"))
    q, k, v = decode_data()

    def step(q, k, v, kv_len):
        idx, valid = sequence_select(
            q, k, kv_len, axis_name="seq", top_k=TOP_K, n_sink=N_SINK, n_local=N_LOCAL,
            vote_pool=args.vote_pool,
        )  # fmt: skip
        return idx, valid, sequence_sparse_attention(q, k, v, idx, valid, axis_name="seq")

    fn = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P("seq"), P("seq"), P()),
            out_specs=(P(), P(), P()),
            check_vma=False,
        )
    )
    qg, kg, vg = _global(q, rep), _global(k, seq), _global(v, seq)
    results = []
    for kv_len in KV_LENS:
        idx, valid, out = steps(fn, qg, kg, vg, _global(np.asarray(kv_len, np.int32), rep))
        results.append(
            {
                "kv_len": kv_len,
                "indices": _replicated_value(idx).tolist(),
                "valid": _replicated_value(valid).tolist(),
                "output": _replicated_value(out).tolist(),
            }
        )
    return {
        "seed": DECODE_SEED,
        "shapes": {"q": list(q.shape), "k": list(k.shape), "v": list(v.shape)},
        "dtype": str(q.dtype),
        "kv_lens": list(KV_LENS),
        "top_k": TOP_K,
        "n_sink": N_SINK,
        "n_local": N_LOCAL,
        "vote_pool": args.vote_pool,
        "results": results,
    }


def sac_setup() -> tuple[Any, Any, np.ndarray, Any]:
    """``(config, trainer, keys [SAC_SEEDS, 2], hparams stacked SAC_SEEDS times)``, the keys and
    hparams as NumPy data; the config is ``TINY`` of tests/rl/test_sac_train.py."""
    import jax

    from jaxsel.rl import envs, sac

    tiny = sac.SACConfig.tiny()  # the test's config (tests/rl/test_sac_train.py)
    trainer = sac.make_train(tiny, envs.Pendulum(), envs.PendulumParams(max_steps_in_episode=10))
    keys = np.stack([np.asarray(jax.random.PRNGKey(i)) for i in range(SAC_SEEDS)])
    hps = jax.tree.map(lambda x: np.stack([np.asarray(x)] * SAC_SEEDS), trainer.default_hparams())
    return tiny, trainer, keys, hps


def run_sac(args: ScaleoutConfig, steps: Steps) -> dict[str, Any]:
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n_dev = jax.device_count()
    if SAC_SEEDS % n_dev:
        raise SystemExit(f"sac needs the device count ({n_dev}) to divide {SAC_SEEDS} seeds")
    mesh = _mesh("seeds")
    sharding = NamedSharding(mesh, P("seeds"))
    config, trainer, keys, hps = sac_setup()
    keys_g = _global(keys, sharding)
    hps_g = jax.tree.map(lambda x: _global(x, sharding), hps)
    state, metrics = steps(jax.jit(jax.vmap(trainer)), keys_g, hps_g)
    actor, eval_return = steps(
        lambda t: multihost_utils.process_allgather(t, tiled=True),
        (state.actor, metrics["eval_return"]),
    )
    return {
        "seeds": SAC_SEEDS,
        "config": dataclasses.asdict(config),
        "actor_leaves": [np.asarray(x).tolist() for x in jax.tree.leaves(actor)],
        "eval_return": np.asarray(eval_return).tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.distributed or os.environ.get(distributed.ENV_NUM_PROCESSES):
        distributed.initialize(
            initialization_timeout=args.init_timeout,
            heartbeat_timeout_seconds=args.heartbeat_timeout,
        )
    import jax

    from jaxsel._bench import write_json

    steps = Steps(args.die_at_step)
    payload = (run_decode if args.task == "decode" else run_sac)(args, steps)
    payload = {
        "task": args.task,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        **payload,
    }
    if jax.process_index() == 0:
        write_json(args.out, payload)
    print(
        f"scaleout_run: task={args.task} process {jax.process_index()}/{jax.process_count()} "
        f"devices {jax.local_device_count()}/{jax.device_count()} steps {steps.count} "
        f"{time.perf_counter() - t0:.1f} s"
        + (f" wrote {args.out}" if jax.process_index() == 0 else ""),
        flush=True,
    )


if __name__ == "__main__":
    main()
