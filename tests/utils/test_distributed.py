"""Multi-process JAX on 127.0.0.1 (issue #22): real processes joined by ``jax.distributed``.

``launch_local`` starts ``scripts/scaleout_run.py`` as 2 or 4 processes with gloo CPU collectives;
their answers must equal the one-process, one-device answer computed here:

- a sequence-sharded TokenSelect decode step (2x1, 4x1 and 2x2 processes x devices; one with
  ``vote_pool=3``, whose halo crosses process boundaries by ``ppermute``) against
  ``select_tokens`` + ``sparse_attention``;
- SAC seeds sharded over 2x2 devices against the jitted vmap on one device;
- a process that dies before its first collective: the survivor aborts by itself on the heartbeat
  timeout (JAX's coordination service), the launcher raises ``DistributedRunError`` naming both,
  and no process is left.

The children get their own ``XLA_FLAGS`` from the launcher (this session's 8 devices do not leak).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.attention import select_tokens, sparse_attention
from jaxsel.rl import envs, sac
from jaxsel.utils.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    DistributedRunError,
    initialize,
    launch_local,
)

SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "scaleout_run.py")

# The same constants as scripts/scaleout_run.py (its JSON records them; checked below).
DECODE_SEED = 0
HQ, HKV, HEAD_DIM, N_TOKENS = 8, 2, 16, 512
KV_LENS = (500, 300, 40)
TOP_K, N_SINK, N_LOCAL = 40, 4, 8
SAC_SEEDS = 4
TINY = sac.SACConfig.tiny()

# Selected tokens and validity must match exactly. The attention output is a softmax-weighted
# mean of at most B = n_sink + top_k + n_local = 52 value rows; the flash-decoding combine sums the
# same float32 terms in another order (per shard, then across shards, with exp(m_i - m) rescaling).
# Reordering a float32 sum of B terms moves it by about sqrt(B) * eps32 * max|term| (a random walk
# of roundings) ~ 7.2 * 1.2e-7 * 2.5 ~ 2e-6 for standard-normal values (|v| rarely above 2.5);
# measured: at most 2.4e-7 over the three meshes and kv_lens.
OUT_TOL = {"rtol": 2e-6, "atol": 2e-6}
# As tests/rl/test_sac_train.py's seeds-over-4-devices test.
SAC_TOL = {"rtol": 1e-5, "atol": 1e-6}
TIMEOUT_S = 90


def _run_script(tmp_path: Path, task: str, n_proc: int, n_dev: int, *extra: str) -> dict:
    out = tmp_path / f"{task}.json"
    stdouts = launch_local(
        [SCRIPT, "--task", task, "--out", str(out), *extra],
        n_proc,
        devices_per_process=n_dev,
        timeout_s=TIMEOUT_S,
    )
    assert len(stdouts) == n_proc
    for i, s in enumerate(stdouts):
        assert f"process {i}/{n_proc} devices {n_dev}/{n_proc * n_dev}" in s, s
    payload = json.loads(out.read_text())
    assert (payload["process_count"], payload["device_count"]) == (n_proc, n_proc * n_dev)
    return payload


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie awaiting a reaper counts as gone)."""
    if Path("/proc/self/stat").exists():  # Linux: tell zombies apart
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------- decode
# Exact index equality with one device needs the k-th and (k+1)-th votes to lie further apart than
# two float32 evaluations can move them: for this data (seed 0) the closest non-tied ranked vote is
# 6.2x (kv_len 500) and 29x (kv_len 300) that rigorous bound away (tests/attention/_bounds.py's
# vote_diff_bound, checked in float64), 31x and 254x with vote_pool=3, so no CPU can flip them.
@pytest.fixture(scope="module")
def decode_reference():
    """``vote_pool -> [(indices, valid, output)] per kv_len``, one process, one device."""
    rng = np.random.default_rng(DECODE_SEED)
    q = rng.standard_normal((HQ, HEAD_DIM), dtype=np.float32)
    k = rng.standard_normal((N_TOKENS, HKV, HEAD_DIM), dtype=np.float32)
    v = rng.standard_normal((N_TOKENS, HKV, HEAD_DIM), dtype=np.float32)
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    cache = {}

    def reference(vote_pool: int):
        if vote_pool not in cache:

            @jax.jit
            def step(kv_len):
                idx, valid = select_tokens(
                    q, k, kv_len, top_k=TOP_K, n_sink=N_SINK, n_local=N_LOCAL,
                    vote_pool=vote_pool,
                )  # fmt: skip
                return idx, valid, sparse_attention(q, k, v, idx, valid)

            cache[vote_pool] = [tuple(np.asarray(x) for x in step(jnp.int32(n))) for n in KV_LENS]
        return cache[vote_pool]

    return reference


@pytest.mark.parametrize(
    ("n_proc", "n_dev", "vote_pool"),
    [(2, 1, 1), (4, 1, 1), (2, 2, 3)],
    ids=["2x1", "4x1", "2x2-pool3"],
)
def test_sequence_sharded_decode_equals_one_device(
    tmp_path, decode_reference, n_proc, n_dev, vote_pool
):
    got = _run_script(tmp_path, "decode", n_proc, n_dev, "--vote-pool", str(vote_pool))
    assert got["seed"] == DECODE_SEED and got["dtype"] == "float32"
    assert got["shapes"] == {
        "q": [HQ, HEAD_DIM],
        "k": [N_TOKENS, HKV, HEAD_DIM],
        "v": [N_TOKENS, HKV, HEAD_DIM],
    }
    assert (got["top_k"], got["n_sink"], got["n_local"]) == (TOP_K, N_SINK, N_LOCAL)
    assert got["vote_pool"] == vote_pool
    assert [r["kv_len"] for r in got["results"]] == list(KV_LENS)
    for r, (idx, valid, out) in zip(got["results"], decode_reference(vote_pool), strict=True):
        np.testing.assert_array_equal(r["indices"], idx, err_msg=f"kv_len={r['kv_len']}")
        np.testing.assert_array_equal(r["valid"], valid, err_msg=f"kv_len={r['kv_len']}")
        np.testing.assert_allclose(r["output"], out, **OUT_TOL, err_msg=f"kv_len={r['kv_len']}")
    # kv_len 40 <= budget: every valid token once (dense); the others select exactly the budget.
    assert [sum(r["valid"]) for r in got["results"]] == [52, 52, 40]


# ----------------------------------------------------------------------------- SAC
def test_sac_seeds_sharded_over_2x2_processes_equal_one_device(tmp_path):
    # The reference compiles here while the two processes run (the launcher thread only waits).
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_run_script, tmp_path, "sac", 2, 2)
        trainer = sac.make_train(
            TINY, envs.Pendulum(), envs.PendulumParams(max_steps_in_episode=10)
        )
        keys = jnp.stack([jax.random.PRNGKey(i) for i in range(SAC_SEEDS)])
        hps = jax.tree.map(lambda x: jnp.stack([x] * SAC_SEEDS), trainer.default_hparams())
        state, metrics = jax.jit(jax.vmap(trainer))(keys, hps)
        got = running.result()
    assert got["config"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert got["seeds"] == SAC_SEEDS
    leaves = jax.tree.leaves(state.actor)
    assert len(got["actor_leaves"]) == len(leaves)
    for a, b in zip(got["actor_leaves"], leaves, strict=True):
        np.testing.assert_allclose(a, b, **SAC_TOL)
    np.testing.assert_allclose(got["eval_return"], metrics["eval_return"], **SAC_TOL)


# ----------------------------------------------------------------------------- failures
def test_dead_process_makes_the_other_fail_within_the_timeout(tmp_path):
    heartbeat, timeout = 10, 60
    t0 = time.monotonic()
    with pytest.raises(DistributedRunError) as info:
        launch_local(
            [SCRIPT, "--task", "decode", "--out", str(tmp_path / "x.json"), "--die-at-step", "1",
             "--heartbeat-timeout", str(heartbeat)],
            2,
            timeout_s=timeout,
            failure_grace_s=timeout,  # let process 0 fail by itself: proves it does not hang
        )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert elapsed < timeout
    err = info.value
    msg = str(err)
    assert "process 1: exit code 3" in msg, msg
    by_id = {f.process_id: f for f in err.failures}
    assert by_id[1].returncode == 3
    # Process 0 exited by itself (JAX aborts on a missing heartbeat), not killed by the deadline.
    assert by_id[0].returncode not in (None, 0), msg
    assert "unhealthy" in by_id[0].stderr_tail or "heartbeat" in by_id[0].stderr_tail, msg
    assert "process 0: exit code" in msg
    assert len(err.pids) == 2 and not any(_alive(p) for p in err.pids)
    assert not (tmp_path / "x.json").exists()


def test_launcher_kills_the_others_at_once_and_names_the_failure():
    code = (
        "import os, sys, time\n"
        f"if os.environ['{ENV_PROCESS_ID}'] == '1':\n"
        "    print('boom: process 1 gives up', file=sys.stderr)\n"
        "    sys.exit(5)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    with pytest.raises(DistributedRunError) as info:
        launch_local(["-c", code], 3, timeout_s=30)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "process 1: exit code 5" in msg and "boom: process 1 gives up" in msg, msg
    assert "process 0: killed by the launcher after another process failed" in msg, msg
    assert "process 2: killed by the launcher" in msg, msg
    assert not any(_alive(p) for p in info.value.pids)


def test_deadline_kills_the_whole_process_group(tmp_path):
    # Each process starts a grandchild in its own group; the deadline must stop both.
    code = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open(os.path.join(sys.argv[1], os.environ['{ENV_PROCESS_ID}']), 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    with pytest.raises(DistributedRunError) as info:
        launch_local(["-c", code, str(tmp_path)], 2, timeout_s=3)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "process 0: timed out after" in msg and "process 1: timed out after" in msg, msg
    grandchildren = [int((tmp_path / str(i)).read_text()) for i in range(2)]
    deadline = time.monotonic() + 5  # orphans are reaped by init, asynchronously
    while any(_alive(p) for p in grandchildren) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in (*info.value.pids, *grandchildren))


def test_launcher_sets_the_environment_and_overrides_the_device_count():
    code = (
        "import json, os\n"
        "print(json.dumps({k: os.environ.get(k) for k in ["
        f"'{ENV_COORDINATOR}', '{ENV_NUM_PROCESSES}', '{ENV_PROCESS_ID}', 'XLA_FLAGS', "
        "'JAX_PLATFORMS', 'JAXSEL_TEST_EXTRA']}))\n"
    )
    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"]  # conftest's
    outs = launch_local(
        ["-c", code], 3, devices_per_process=2, timeout_s=30, env={"JAXSEL_TEST_EXTRA": "1"}
    )
    envs_ = [json.loads(o) for o in outs]
    assert [e[ENV_PROCESS_ID] for e in envs_] == ["0", "1", "2"]
    assert {e[ENV_NUM_PROCESSES] for e in envs_} == {"3"}
    assert len({e[ENV_COORDINATOR] for e in envs_}) == 1
    assert envs_[0][ENV_COORDINATOR].startswith("127.0.0.1:")
    for e in envs_:
        flags = e["XLA_FLAGS"].split()
        assert [f for f in flags if "device_count" in f] == [
            "--xla_force_host_platform_device_count=2"
        ]
        assert e["JAX_PLATFORMS"] == "cpu" and e["JAXSEL_TEST_EXTRA"] == "1"


# ----------------------------------------------------------------------------- bad input
def test_bad_arguments_raise_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="n_processes"):
        launch_local(["-c", "pass"], 0)
    with pytest.raises(ValueError, match="devices_per_process"):
        launch_local(["-c", "pass"], 2, devices_per_process=0)
    with pytest.raises(ValueError, match="timeout_s"):
        launch_local(["-c", "pass"], 2, timeout_s=0)
    with pytest.raises(ValueError, match="argv"):
        launch_local("script.py", 2)  # type: ignore[arg-type]
    for var in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"process_id=2, num_processes=2"):
        initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match=r"process_id=-1"):
        initialize("127.0.0.1:1234", 2, -1)
    with pytest.raises(ValueError, match="num_processes must be >= 1, got 0"):
        initialize("127.0.0.1:1234", 0, 0)
    with pytest.raises(ValueError, match="host:port"):
        initialize("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match="missing: process_id"):
        initialize("127.0.0.1:1234", 2)
    monkeypatch.setenv(ENV_COORDINATOR, "127.0.0.1:1234")
    monkeypatch.setenv(ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(ENV_PROCESS_ID, "5")
    with pytest.raises(ValueError, match=r"process_id=5, num_processes=2"):
        initialize()
    monkeypatch.setenv(ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match=f"{ENV_NUM_PROCESSES}='two'"):
        initialize()
    assert not jax.distributed.is_initialized()
