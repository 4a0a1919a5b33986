"""The whole program: service wiring (``service``), the twistd plugin's
options (``tap``), the ``tlsmta`` command (``cli``), the control socket
(``control``), ``tlsmta probe`` (``probe``), the configuration checks
that need this machine (``preflight``) and the command's output into a pipe
its reader closed (``pipe``).

The top of the house: may import every other part; nothing imports it
except ``tlsmta.testing``.

This ``__init__`` is the part's API: other parts import only the names in
``__all__``; the modules behind it are private (``_name.py``), except the
two entry points ``tap`` (twistd's ServiceMaker) and ``cli`` (the ``tlsmta``
console script).
"""

from tlsmta.app._preflight import from_dict as checked_config
from tlsmta.app._service import TlsmtaService

__all__ = [
    "checked_config",
    "TlsmtaService",
]
