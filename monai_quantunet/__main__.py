"""``python -m monai_quantunet``: see :mod:`monai_quantunet.cli`."""

import sys

from monai_quantunet.cli import main

sys.exit(main())
