"""Infrastructure shared by every area and the scripts: checkpoints, compile options, CLI flags, plots.

- :mod:`~jaxsel.utils.checkpoint` -- :func:`save_tree` / :func:`restore_tree` (orbax), and
  :func:`restore_or_make` for resumable multi-phase runs.
- :mod:`~jaxsel.utils.compile` -- :data:`FAST_COMPILE`, the XLA options for programs whose compile
  time dominates, and :func:`fast_jit` / :func:`cached_jit`.
- :mod:`~jaxsel.utils.config_cli` -- :func:`parse_config`: a frozen config dataclass turned into
  ``--flags`` (:func:`flag` adds help text and choices to a field).
- :mod:`~jaxsel.utils.distributed` -- :func:`initialize` (join a multi-process JAX job; arguments
  from ``JAXSEL_*`` variables or cluster auto-detection) and :func:`launch_local` (n processes on
  127.0.0.1, failures raised as :class:`DistributedRunError`).
- :mod:`~jaxsel.utils.plotting` -- :func:`pyplot` (headless matplotlib), :func:`save_figure` and
  :func:`line_plot`.

Nothing here imports another part of :mod:`jaxsel`; each module imports its heavy dependency
(orbax, matplotlib) only when called.
"""

from jaxsel.utils.checkpoint import restore_or_make, restore_tree, save_tree
from jaxsel.utils.compile import FAST_COMPILE, cached_jit, fast_jit
from jaxsel.utils.config_cli import add_config_flags, config_from_args, flag, parse_config
from jaxsel.utils.distributed import DistributedRunError, initialize, launch_local
from jaxsel.utils.plotting import line_plot, pyplot, save_figure

__all__ = [
    "FAST_COMPILE",
    "DistributedRunError",
    "add_config_flags",
    "cached_jit",
    "config_from_args",
    "fast_jit",
    "flag",
    "initialize",
    "launch_local",
    "line_plot",
    "parse_config",
    "pyplot",
    "restore_or_make",
    "restore_tree",
    "save_figure",
    "save_tree",
]
