"""brainpipe: index raw EEG/MEG recordings, build one HDF5 cache, train on CUDA.

Importing the package is cheap on purpose: the `index` command must start in well under a second,
so stage modules (and torch) are imported only by the code that needs them.
"""

__version__ = "0.1.0"

from brainpipe.errors import BrainpipeError  # noqa: E402

__all__ = ["BrainpipeError", "__version__"]
