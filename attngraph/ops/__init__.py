"""Op families; importing this package registers every op."""

from . import attention, basic, norm, sequence  # noqa: F401
