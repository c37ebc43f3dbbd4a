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


@dataclasses.dataclass(frozen=True)
class PosCfg:
    names: tuple[str, ...] = dataclasses.field(default=(), metadata={"positional": True})
    timeout: float = 900.0


@dataclasses.dataclass(frozen=True)
class ReqCfg:
    task: str = dataclasses.field(default=dataclasses.MISSING, metadata={"choices": ("a", "b")})
    target: str = dataclasses.field(default=dataclasses.MISSING, metadata={"positional": True})
    n: int = 1


def test_parse_config_positional_and_required_fields(capsys):
    from jaxsel.utils.config_cli import flag

    assert parse_config(PosCfg, []) == PosCfg()
    assert parse_config(PosCfg, ["x", "y", "--timeout", "5"]) == PosCfg(("x", "y"), 5.0)
    assert parse_config(ReqCfg, ["t", "--task", "b"]) == ReqCfg("b", "t")
    for argv in (["t"], ["--task", "a"], ["t", "--task", "c"]):
        with pytest.raises(SystemExit):
            parse_config(ReqCfg, argv)
    assert "required" in capsys.readouterr().err
    assert flag("x", "h", positional=True).metadata == {"help": "h", "positional": True}


@dataclasses.dataclass(frozen=True)
class PresetCfg:
    steps: int = 100
    lr: float = 0.1
    small: bool = False
    tiny: bool = False


def test_parse_config_presets_replace_defaults_and_given_flags_win():
    presets = {"small": {"steps": 10, "lr": 0.5}, "tiny": {"steps": 2}}
    assert parse_config(PresetCfg, [], presets=presets) == PresetCfg()
    got = parse_config(PresetCfg, ["--small"], presets=presets)
    assert got == PresetCfg(steps=10, lr=0.5, small=True)
    got = parse_config(PresetCfg, ["--tiny", "--small"], presets=presets)  # declaration order
    assert got == PresetCfg(steps=2, lr=0.5, small=True, tiny=True)
    got = parse_config(PresetCfg, ["--small", "--steps", "7"], presets=presets)
    assert got == PresetCfg(steps=7, lr=0.5, small=True)
    with pytest.raises(TypeError, match="bool field"):
        parse_config(PresetCfg, [], presets={"steps": {}})
    with pytest.raises(TypeError, match="no field"):
        parse_config(PresetCfg, [], presets={"small": {"nope": 1}})


def test_config_comma_list_reads_items_and_names_the_field():
    from jaxsel.utils.config_cli import comma_list

    assert comma_list("2048, 4096,", "lengths", int) == (2048, 4096)
    assert comma_list("", "lengths", int) == ()
    assert comma_list("a,b", "names") == ("a", "b")
    with pytest.raises(ValueError, match="lengths: bad item in '2048,x'"):
        comma_list("2048,x", "lengths", int)
