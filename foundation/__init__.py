"""foundation: train one CLIP-MUSED brain-decoding model across many fMRI datasets and subjects."""

from foundation.core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
