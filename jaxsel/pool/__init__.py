"""SoftPool: exponentially weighted pooling in 1, 2 and 3 spatial dimensions.

Stergiou et al., "Refining activation downsampling with SoftPool", ICCV 2021 (arXiv:2101.00440).

- :func:`soft_pool` -- pure function, channels-last, ``flax.linen.max_pool`` conventions.
- :func:`soft_pool_output_shape` -- the output shape for an input shape.
- :class:`SoftPool` -- flax NNX layer wrapping :func:`soft_pool`.
"""

from jaxsel.pool.modules import SoftPool
from jaxsel.pool.softpool import soft_pool, soft_pool_output_shape

__all__ = ["SoftPool", "soft_pool", "soft_pool_output_shape"]
