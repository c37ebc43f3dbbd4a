"""The SoftHebb experiment driver: config validation and bit-exact resume from chunk checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxsel.hebb import data, nets
from jaxsel.hebb import experiment as X


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(pool="median"), "pool"),
        (dict(training_mode="sideways"), "training_mode"),
        (dict(batch_size=0), "batch_size"),
        (dict(probes="softhebb,oracle"), "probes"),
        (dict(backprop_halve_at="2,x"), "backprop_halve_at"),
        (dict(only_backprop=True), "only_backprop"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        X.ExperimentConfig(**kw)


@pytest.mark.slow  # three runs with an orbax save after every chunk
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    d = data.load_digits()
    cfg1 = X.ExperimentConfig(limit_train=80, chunk_steps=3, epochs=1)
    cfg2 = X.ExperimentConfig(limit_train=80, chunk_steps=3, epochs=2)
    images = d.x_train[:80]
    net = nets.digits_preset(4)
    key = jax.random.key(0)
    ckpt = tmp_path / "ckpt"
    X.run_unsupervised(key, cfg1, net, images, ckpt_dir=ckpt, progress=False)
    # a consecutive run may add epochs: the second call resumes after the first epoch's chunks
    resumed = X.run_unsupervised(key, cfg2, net, images, ckpt_dir=ckpt, progress=False)
    assert resumed.stats["resumed_at_chunk"] == 3
    full = X.run_unsupervised(key, cfg2, net, images, progress=False)
    jax.tree.map(np.testing.assert_array_equal, (resumed.state, resumed.wins), full[:2])
    with pytest.raises(ValueError, match="another run"):
        X.run_unsupervised(
            key, X.ExperimentConfig(limit_train=80, chunk_steps=4), net, images, ckpt_dir=ckpt
        )
