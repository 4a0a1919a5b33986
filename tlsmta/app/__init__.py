"""The whole program: service wiring (``service``), the twistd plugin's
options (``tap``), the ``tlsmta`` command (``cli``), the control socket
(``control``), ``tlsmta probe`` (``probe``) and the configuration checks
that need this machine (``preflight``).

The top of the house: may import every other part; nothing imports it
except ``tlsmta.testing``.
"""
