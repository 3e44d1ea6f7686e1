"""Names that 0.0.20 service files import (``service_framework.utils.*``).

Kept so existing service files run unchanged; new code should use
``from service_framework import get_logger``.
"""
