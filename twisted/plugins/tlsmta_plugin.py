"""twistd plugin: ``twistd -n tlsmta [--config FILE]``; and the ``reuseport:`` endpoint type."""

from twisted.application.service import ServiceMaker

from tlsmta.inbound._reuseport import ReusePortParser

tlsmta = ServiceMaker("tlsmta", "tlsmta.app.tap", "A mail transfer agent with serious TLS policy.", "tlsmta")
reuseport = ReusePortParser()
