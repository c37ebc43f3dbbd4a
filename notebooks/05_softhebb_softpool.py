# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SoftHebb filters on digits, and SoftPool against max and average pooling
#
# **SoftHebb** (Journé et al., ICLR 2023, arXiv:2209.11883) learns convolutional filters without
# labels or backpropagation: each neuron's weights move by a soft winner-take-all Hebbian rule,
# $\Delta w_{ik} = \eta\, y_k (x_i - u_k w_{ik})$ with $y = \mathrm{softmax}(u / \tau)$ over the
# neurons and $u = w^\top x$ (the `softkrotov` variant pushes the runner-up away). A linear probe
# on the frozen features then measures what was learned.
#
# **SoftPool** (Stergiou et al., ICCV 2021, arXiv:2101.00440) pools each window by its
# softmax-weighted mean, $y = \sum_i w_i x_i$ with $w_i = e^{x_i} / \sum_j e^{x_j}$.

# %%
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxsel import hebb, pool
from jaxsel.hebb import data

# %%
QUICK = True  # True: 3 unsupervised epochs (~1 min); False: 10 epochs, as the digits test does

# %% [markdown]
# ## Unsupervised pass on scikit-learn's 8x8 digits
#
# The `digits` preset: two SoftHebb conv blocks (32 then 128 channels, 3x3 kernels, BatchNorm,
# Triangle activation, 2x2 max pooling); `make_unsupervised_train` is one jitted function of a key
# and the images, which also counts how often each neuron wins (is the argmax).

# %%
EPOCHS = 3 if QUICK else 10
N_LABELS = 200  # labelled training images for the few-label probe (of 1258)

digits = data.load_digits()
cfg = hebb.digits_preset()
t0 = time.perf_counter()
unsupervised = jax.jit(hebb.make_unsupervised_train(cfg, batch_size=10, epochs=EPOCHS))
state, wins = unsupervised(jax.random.key(0), digits.x_train)
print(f"{EPOCHS} unsupervised epochs: {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## The learned first-layer filters
#
# Each neuron starts at a random vector of norm ~25; the rule's $-u_k w_{ik}$ term pulls norms
# toward 1 as it learns, so the first block's filters are drawn next to their random start.

# %%
random_state = hebb.init_net(jax.random.split(jax.random.key(0))[0], cfg)  # the same init
fig, axes = plt.subplots(4, 16, figsize=(10, 2.8))
for row, (w, name) in enumerate(
    [(random_state.weights[0], "random"), (state.weights[0], "SoftHebb")]
):
    w = np.asarray(w)[:, :, 0, :]  # (3, 3, 32)
    for j in range(32):
        ax = axes[2 * row + j // 16, j % 16]
        ax.imshow(w[:, :, j], cmap="RdBu_r", vmin=-np.abs(w).max(), vmax=np.abs(w).max())
        ax.set_xticks([])
        ax.set_yticks([])
    axes[2 * row, 0].set_ylabel(name, rotation=0, ha="right")
norm_random = float(np.asarray(hebb.neuron_norms(random_state.weights[0])).mean())
norm_learned = float(np.asarray(hebb.neuron_norms(state.weights[0])).mean())
print(f"mean neuron norm, block 0: random {norm_random:.2f} -> SoftHebb {norm_learned:.2f}")

# %% [markdown]
# ## Who wins
#
# A collapsed Hebbian layer has a few neurons winning everything and the rest dead; the soft
# competition keeps every neuron in play (shares near $1/32$ and $1/128$).

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
for i, (ax, w) in enumerate(zip(axes, wins, strict=True)):
    share = np.asarray(w) / np.asarray(w).sum()
    ax.bar(np.arange(len(share)), np.sort(share)[::-1], width=1.0)
    ax.axhline(1 / len(share), color="k", ls="--", lw=1, label="uniform")
    s = hebb.winner_stats(w)
    ax.set_title(f"block {i}: {s['never_won']} never won, entropy {s['normalized_entropy']:.2f}")
    ax.set_xlabel("neuron (sorted)")
    ax.set_ylabel("share of wins")
    ax.legend()
fig.tight_layout()

# %% [markdown]
# ## Linear probe: SoftHebb features against the same net with random weights
#
# The control keeps the random initial kernels and calibrates its BatchNorm statistics on the
# same images. With all 1258 labels both probes are near the ceiling (`results/hebb/README.md`:
# 98.5% vs 97.8% after 10 epochs, a margin of 2-4 test images). With 200 labels the gap is wider
# on seed 0 (3 epochs: 90.0% vs 86.8%; 10 epochs: 92.0% vs 86.8%) and on seed 1 (+3.2 points),
# but not on every seed: seed 2 loses by 0.9 points at 3 epochs.

# %%
n = digits.x_train.shape[0] // 10 * 10
calibrate = jax.jit(hebb.calibrate_batch_norm, static_argnums=3)
random_state = calibrate(random_state, digits.x_train, np.arange(n).reshape(-1, 10), cfg)
probe = jax.jit(hebb.make_probe_train(hebb.ProbeConfig(epochs=30), 10))
acc = {}
for name, s in (("SoftHebb", state), ("random", random_state)):
    f_train = hebb.extract_features(s, digits.x_train, cfg)
    f_test = hebb.extract_features(s, digits.x_test, cfg)
    for labels in (N_LABELS, len(f_train)):
        head = probe(jax.random.key(1), f_train[:labels], digits.y_train[:labels])
        acc[name, labels] = hebb.probe_accuracy(head, f_test, digits.y_test)
        print(f"{name:8s} {labels:4d} labels: test accuracy {acc[name, labels]:.4f}")

# %%
fig, ax = plt.subplots(figsize=(5, 3))
for i, name in enumerate(("SoftHebb", "random")):
    vals = [acc[name, N_LABELS], acc[name, len(f_train)]]
    ax.bar(np.arange(2) + 0.4 * i, vals, 0.4, label=name)
ax.set_xticks(np.arange(2) + 0.2, [f"{N_LABELS} labels", f"{len(f_train)} labels"])
ax.set_ylim(0.8, 1.0)
ax.set_ylabel("probe test accuracy")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## SoftPool against max and average pooling
#
# On a toy 8x8 input with a few bright spots, 2x2 windows with stride 2: max pooling keeps only
# the peak, average pooling dilutes it, SoftPool sits between them and keeps the peaks' weight.

# %%
x = np.zeros((8, 8, 1), np.float32)
x[1, 1], x[1, 2], x[4, 5], x[6, 2], x[6, 3] = 3.0, 1.0, 2.0, 1.5, 1.5
x = jnp.asarray(x + 0.2 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32))
pools = {
    "max": lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)),
    "average": lambda v: nn.avg_pool(v, (2, 2), strides=(2, 2)),
    "SoftPool": lambda v: pool.soft_pool(v, (2, 2), strides=(2, 2)),
}
fig, axes = plt.subplots(1, 4, figsize=(11, 2.8))
axes[0].imshow(x[..., 0], cmap="viridis", vmin=-0.5, vmax=3)
axes[0].set_title("input")
for ax, (name, f) in zip(axes[1:], pools.items(), strict=True):
    ax.imshow(f(x)[..., 0], cmap="viridis", vmin=-0.5, vmax=3)
    ax.set_title(name)
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()

# %% [markdown]
# ## Where the gradient goes
#
# $\partial y / \partial x_i = w_i (1 + x_i - y)$: every cell of a window gets a share of the
# gradient (most to the largest), where max pooling routes all of it to one cell and average
# pooling splits it evenly regardless of the values.

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, (name, f) in zip(axes, pools.items(), strict=True):
    g = jax.grad(lambda v, f=f: f(v).sum())(x)[..., 0]
    im = ax.imshow(g, cmap="magma", vmin=0.0, vmax=1.2)  # one scale: average's 0.25 shows
    ax.set_title(f"{name}: {int((np.abs(g) > 1e-6).sum())} cells get gradient", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label=r"$\partial \sum y / \partial x$")

# %%
# The probe gap depends on the seed (see above), so the notebook asserts what the learning rule
# itself does on any seed: the -u_k w_ik term pulls the first block's norms from ~25 toward 1
# (measured 22 -> 2.1 at QUICK), and the soft competition leaves no first-block neuron dead.
never_won = hebb.winner_stats(wins[0])["never_won"]
assert norm_learned < 0.2 * norm_random and never_won == 0, (norm_random, norm_learned, never_won)
