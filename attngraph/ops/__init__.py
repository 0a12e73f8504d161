"""Op families; importing this package registers every op."""

from . import attention, basic, norm, position_bias, recurrent, sequence  # noqa: F401
