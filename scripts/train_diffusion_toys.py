"""Trains the learned models of the steering toys and saves them with orbax.

(a) SVDD-MC value networks (mean value and soft values at --value-lams) on rollouts of the
    closed-form GMM denoiser;
(b) MLP x0-denoiser on the 2D Gaussian mixture, plus SVDD-MC value networks on its rollouts;
(c) MLP x0-denoiser on scikit-learn 8x8 digits, plus a classifier used as a black-box reward;
(d) tiny transformer MDLM denoiser on the Markov chain.

    nice -n 10 python scripts/train_diffusion_toys.py --out jaxsel/diffusion/assets
    nice -n 10 python scripts/train_diffusion_toys.py --only value,value_exact  # value nets only
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsel.diffusion import samplers, toys, train
from jaxsel.diffusion.benchmark import GMM_W
from jaxsel.utils import flag, parse_config, restore_tree, save_tree

CHAIN_LENGTH = 6
NUM_STEPS = 50
MODELS = ("gmm", "value", "value_exact", "digits", "classifier", "chain")


def _report(name: str, losses, t0: float) -> None:
    losses = np.asarray(losses)
    k = max(len(losses) // 10, 1)
    print(
        f"{name:18s} loss first {losses[:k].mean():.4f} last {losses[-k:].mean():.4f} "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )


@dataclasses.dataclass(frozen=True)
class Config:
    out: str = str(train.ASSETS)
    steps: int = flag(3000, "optimizer steps per model")
    seed: int = 0
    only: str = "gmm,value,value_exact,digits,classifier,chain"
    value_lams: str = flag("0.5,1,2", "tilts of the SVDD-MC soft values")
    value_rollouts: int = flag(16384, "rollouts per value net")
    value_steps: int = 6000
    value_hidden: int = 128
    value_depth: int = 3
    soft_only: bool = flag(False, "skip the mean-value nets")

    def __post_init__(self):
        unknown = set(self.only.split(",")) - set(MODELS)
        if unknown:
            raise ValueError(f"only: unknown {sorted(unknown)} (known: {MODELS})")


def main() -> None:
    a = parse_config(Config, description=__doc__)
    out = Path(a.out)
    which = set(a.only.split(","))
    key = jax.random.key(a.seed)
    out.mkdir(parents=True, exist_ok=True)
    gmm = toys.default_gmm()

    if "gmm" in which:
        t0 = time.perf_counter()
        fit = train.make_train_vp(
            train.VPTrainConfig(steps=a.steps, batch_size=512),
            train.mlp_apply,
            partial(train.mlp_init, dim=2, hidden=128, depth=3),
            lambda k, n: toys.gmm_sample(k, gmm, n),
        )
        params, losses = jax.jit(fit)(jax.random.fold_in(key, 1))
        _report("gmm_mlp", losses, t0)
        save_tree(out / "gmm_mlp", params)

    def fit_value(name, den_params, proc, lam, seed):
        """SVDD-MC value on rollouts of ``proc``: soft value for lam > 0, mean value for None."""
        t0 = time.perf_counter()
        fit = train.make_train_value(
            train.ValueTrainConfig(
                lam=lam, num_rollouts=a.value_rollouts, steps=a.value_steps, batch_size=512
            ),
            train.scalar_mlp_apply if lam is None else train.two_mlp_apply,
            partial(
                train.mlp_init if lam is None else train.two_mlp_init,
                dim=2,
                hidden=a.value_hidden,
                depth=a.value_depth,
                **({"out_dim": 1} if lam is None else {}),
            ),
            proc,
            den_params,
            toys.linear_reward(GMM_W),
        )
        params, losses = jax.jit(fit)(jax.random.fold_in(key, seed))
        _report(name, losses, t0)
        save_tree(out / name, params)

    value_lams = [float(v) for v in a.value_lams.split(",") if v]
    sched = samplers.vp_schedule(NUM_STEPS)
    if "value" in which:  # (b): rollouts of the learned MLP denoiser
        den = restore_tree(out / "gmm_mlp")
        proc = samplers.vp_process(train.mlp_apply, sched, (2,))
        if not a.soft_only:
            fit_value("gmm_value", den, proc, None, 2)
        for i, lam in enumerate(value_lams):
            fit_value(f"gmm_soft_value_lam{lam:g}", den, proc, lam, 20 + i)
    if "value_exact" in which:  # (a): rollouts of the closed-form denoiser
        proc = samplers.vp_process(toys.gmm_denoiser, sched, (2,))
        if not a.soft_only:
            fit_value("gmm_exact_value", gmm, proc, None, 6)
        for i, lam in enumerate(value_lams):
            fit_value(f"gmm_exact_soft_value_lam{lam:g}", gmm, proc, lam, 30 + i)

    if "digits" in which or "classifier" in which:
        x, y = train.load_digits_scaled()
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(x))
        tr = perm[: int(0.8 * len(x))]
        xtr, ytr = jnp.asarray(x[tr]), jnp.asarray(y[tr])
    if "digits" in which:
        t0 = time.perf_counter()
        fit = train.make_train_vp(
            train.VPTrainConfig(steps=2 * a.steps, batch_size=256, lr=1e-3),
            train.mlp_apply,
            partial(train.mlp_init, dim=64, hidden=384, depth=3, t_dim=32),
            lambda k, n: xtr[jax.random.randint(k, (n,), 0, xtr.shape[0])],
        )
        params, losses = jax.jit(fit)(jax.random.fold_in(key, 3))
        _report("digits_mlp", losses, t0)
        save_tree(out / "digits_mlp", params)
    if "classifier" in which:
        t0 = time.perf_counter()
        fit = train.make_train_classifier(
            train.ClassifierTrainConfig(steps=a.steps // 2, noise=0.2),
            train.mlp_apply,
            partial(train.mlp_init, dim=64, hidden=128, depth=2, out_dim=10, t_dim=2),
            xtr,
            ytr,
        )
        params, losses = jax.jit(fit)(jax.random.fold_in(key, 4))
        te = perm[int(0.8 * len(x)) :]
        logits = jax.vmap(lambda v: train.mlp_apply(params, v, 0.0))(jnp.asarray(x[te]))
        acc = float(jnp.mean(jnp.argmax(logits, -1) == y[te]))
        _report(f"classifier acc={acc:.3f}", losses, t0)
        save_tree(out / "digits_classifier", params)

    if "chain" in which:
        t0 = time.perf_counter()
        chain = toys.default_chain()
        V = chain.init.shape[0]
        fit = train.make_train_masked(
            train.MaskedTrainConfig(vocab_size=V, steps=a.steps, batch_size=128),
            train.transformer_apply,
            partial(train.transformer_init, length=CHAIN_LENGTH, vocab_size=V, width=32, depth=2),
            lambda k, n: jax.vmap(lambda kk: toys.chain_sample(kk, chain, CHAIN_LENGTH))(
                jax.random.split(k, n)
            ),
        )
        params, losses = jax.jit(fit)(jax.random.fold_in(key, 5))
        _report("chain_transformer", losses, t0)
        save_tree(out / "chain_transformer", params)


if __name__ == "__main__":
    main()
