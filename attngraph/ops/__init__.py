"""Op families; importing this package registers every op."""

from . import attention, basic, norm, patterns, position_bias, recurrent, sequence  # noqa: F401
