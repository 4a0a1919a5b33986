"""twistd plugin: ``twistd -n tlsmta [--config FILE]``."""

from twisted.application.service import ServiceMaker

tlsmta = ServiceMaker("tlsmta", "tlsmta.tap", "A mail transfer agent with serious TLS policy.", "tlsmta")
