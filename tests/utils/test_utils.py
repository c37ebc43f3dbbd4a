"""jaxsel.utils: orbax round trips, the fast-compile jit, config dataclasses as flags, plots."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsel.utils import (
    FAST_COMPILE,
    fast_jit,
    line_plot,
    parse_config,
    pyplot,
    restore_or_make,
    restore_tree,
    save_figure,
    save_tree,
)


class State(NamedTuple):
    key: jax.Array
    w: jax.Array
    step: jax.Array


def _state(seed: int) -> State:
    return State(jax.random.key(seed), jnp.arange(6.0).reshape(2, 3) * seed, jnp.asarray(seed))


def test_save_restore_round_trip_with_and_without_like(tmp_path):
    s = _state(3)
    path = save_tree(tmp_path / "a" / "ckpt", s)
    assert path.is_absolute() and path.exists()
    save_tree(tmp_path / "a" / "ckpt", s)  # overwrites
    back = restore_tree(tmp_path / "a" / "ckpt", jax.eval_shape(lambda: s))
    assert isinstance(back, State)
    np.testing.assert_array_equal(jax.random.key_data(back.key), jax.random.key_data(s.key))
    np.testing.assert_array_equal(back.w, s.w)
    plain = {"w": jnp.ones((2,)), "n": [jnp.int32(1)]}
    save_tree(tmp_path / "p", plain)
    got = restore_tree(tmp_path / "p")
    assert isinstance(got["w"], jax.Array)
    np.testing.assert_array_equal(got["w"], plain["w"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_tree(tmp_path / "missing")


def test_restore_or_make_calls_make_once(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return {"x": jnp.arange(3)}

    first = restore_or_make(tmp_path / "phase", make)
    second = restore_or_make(tmp_path / "phase", make)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["x"], second["x"])


def test_fast_jit_matches_jit_and_works_as_decorator():
    def f(x, n):
        return jnp.sin(x) * n

    x = jnp.linspace(0, 1, 7)
    want = jax.jit(f, static_argnums=1)(x, 3)
    np.testing.assert_allclose(fast_jit(f, static_argnums=1)(x, 3), want, rtol=1e-6)
    g = fast_jit(static_argnums=1)(f)
    np.testing.assert_allclose(g(x, 3), want, rtol=1e-6)
    # under an outer jit / vmap it is traced into the caller's program
    np.testing.assert_allclose(jax.jit(lambda v: g(v, 3))(x), want, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda v: g(v, 3))(x), want, rtol=1e-6)
    assert FAST_COMPILE["xla_backend_optimization_level"] == 0


@dataclasses.dataclass(frozen=True)
class Cfg:
    steps: int = 10
    lr: float = 1e-3
    name: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
    sizes: tuple[int, ...] = (4, 4)
    quick: bool = False
    resume: bool = True
    data_dir: str | None = None
    out: Path = Path("out/x")

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_parse_config_types_defaults_and_validation(capsys):
    assert parse_config(Cfg, []) == Cfg()
    argv = "--steps 5 --lr 0.5 --name b --sizes 1 2 3 --quick --no-resume --data-dir /d --out o"
    got = parse_config(Cfg, argv.split())
    assert got == Cfg(5, 0.5, "b", (1, 2, 3), True, False, "/d", Path("o"))
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--name", "c"])
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--steps", "0"])
    assert "steps must be >= 1" in capsys.readouterr().err


def test_save_figure_writes_and_closes(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "sub" / "f.png")
    assert path.exists() and path.stat().st_size > 0
    assert not plt.get_fignums()


def test_line_plot_writes_one_png(tmp_path):
    path = line_plot(
        {"a": ([1, 2, 4], [0.1, 0.5, 0.9]), "b": ([1, 2, 4], [0.2, 0.2, 0.3])},
        tmp_path / "lines.png",
        xlabel="x",
        ylabel="y",
        log_x_base=2,
        ylim=(0, 1),
        title="t",
    )
    assert path.exists() and path.stat().st_size > 0
    assert not pyplot().get_fignums()


def test_only_given_flags_override_a_preset():
    import argparse

    from jaxsel.utils import add_config_flags, config_from_args

    p = argparse.ArgumentParser()
    add_config_flags(p, Cfg, only_given=True)
    preset = {"steps": 3, "name": "b"}
    assert config_from_args(Cfg, p.parse_args([]), base=preset) == Cfg(steps=3, name="b")
    got = config_from_args(Cfg, p.parse_args(["--steps", "7", "--quick"]), base=preset)
    assert got == Cfg(steps=7, name="b", quick=True)
