"""Pallas kernels for the TokenSelect hot path, each beside a plain-JAX reference.

One folder per op (``token_select/``, ``topk/``, ``sparse_decode/``), each with ``api.py`` (one entry
point dispatching over implementations), ``reference.py``, ``config.py`` (``BlockSizes``) and one module
per backend. This package never imports :mod:`jaxsel`.
"""

from pallas_kernels._dispatch import available_implementations, default_backend_kind

__all__ = ["available_implementations", "default_backend_kind"]
