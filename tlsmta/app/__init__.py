"""The whole program: service wiring (``service``), the twistd plugin's
options (``tap``), the ``tlsmta`` command (``cli``), the control socket
(``control``) and ``tlsmta probe`` (``probe``).

The top of the house: may import every other part; nothing imports it
except ``tlsmta.testing``.
"""
