"""``python -m qsnn_kernels.train [flags]``: the same as ``qsnn train`` (works under torchrun)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
