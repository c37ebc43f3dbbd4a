"""SoftHebb: Hebbian soft winner-take-all learning without feedback (Journé et al., ICLR 2023).

The user API is re-exported here; building blocks stay importable from their modules: pure
plasticity math in :mod:`~jaxsel.hebb.rules` (optax-style ``(init, update)`` pairs, the deltas,
patches and convolutions), blocks in :mod:`~jaxsel.hebb.layers` (BatchNorm, pooling, padding), the
configurable net and presets in :mod:`~jaxsel.hebb.nets`, training loops and their chunked steps in
:mod:`~jaxsel.hebb.train`, offline data in :mod:`~jaxsel.hebb.data`, the experiment driver
(resumable unsupervised pass, probes, controls) in :mod:`~jaxsel.hebb.experiment`.
"""

from jaxsel.hebb.nets import (
    PRESETS,
    BlockConfig,
    NetConfig,
    NetState,
    cifar10_preset,
    digits_preset,
    features,
    forward,
    hebbian_step,
    init_net,
    small_preset,
    two_layer_preset,
    winner_stats,
)
from jaxsel.hebb.rules import (
    conv_step,
    dense_step,
    init_weights,
    neuron_norms,
    soft_wta,
    softhebb,
    softkrotov_wta,
    triangle,
)
from jaxsel.hebb.train import (
    LinearHead,
    ProbeConfig,
    backprop_accuracy,
    calibrate_batch_norm,
    extract_features,
    make_backprop_train,
    make_probe_train,
    make_unsupervised_train,
    probe_accuracy,
)

__all__ = [
    "PRESETS",
    "BlockConfig",
    "LinearHead",
    "NetConfig",
    "NetState",
    "ProbeConfig",
    "backprop_accuracy",
    "calibrate_batch_norm",
    "cifar10_preset",
    "conv_step",
    "dense_step",
    "digits_preset",
    "extract_features",
    "features",
    "forward",
    "hebbian_step",
    "init_net",
    "init_weights",
    "make_backprop_train",
    "make_probe_train",
    "make_unsupervised_train",
    "neuron_norms",
    "probe_accuracy",
    "small_preset",
    "soft_wta",
    "softhebb",
    "softkrotov_wta",
    "triangle",
    "two_layer_preset",
    "winner_stats",
]
