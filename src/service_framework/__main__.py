"""``python -m service_framework``."""

import sys

from .cli import main

sys.exit(main())
