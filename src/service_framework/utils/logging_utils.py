"""0.0.20 compatibility: ``from service_framework.utils.logging_utils import get_logger``."""

from ..logs import get_logger

__all__ = ["get_logger"]
