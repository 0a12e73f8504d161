"""Op families; importing this package registers every op."""

from . import (  # noqa: F401
    attention,
    basic,
    heads,
    norm,
    patterns,
    position_bias,
    recurrent,
    sequence,
)
