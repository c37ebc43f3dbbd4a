"""Compile helpers shared by the SoftHebb tests (imported as a sibling module: tests/hebb has no
``__init__.py``, so pytest puts this folder on ``sys.path``).

Compilation dominates these small-shape tests on a 2-core CPU: ``jit`` skips XLA:CPU's LLVM
optimisation passes (``jaxsel.utils.FAST_COMPILE``; results equal up to float rounding). Op-by-op
dispatch compiles every primitive once per shape (threefry for each init alone is costly), so
test inputs are built by one small compiled program each.
"""

from __future__ import annotations

import jax

from jaxsel.hebb import nets, train
from jaxsel.utils import fast_jit as jit

init_net = jit(nets.init_net, static_argnums=1)
batch_indices = jit(train.batch_indices, static_argnums=(1, 2))
uniform = jit(jax.random.uniform, static_argnums=1)
