"""0.0.20 compatibility: ``from service_framework.utils.constants import PACKAGE_LOGGER_NAME``."""

from ..logs import PACKAGE_LOGGER_NAME

__all__ = ["PACKAGE_LOGGER_NAME"]
