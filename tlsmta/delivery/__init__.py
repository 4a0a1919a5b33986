"""Sending mail: the queue with its retry schedule (``mailqueue``), the
per-destination pool and delivery jobs (``pool``), the ``ESMTPSender``
shell (``client``) and delivery status notifications (``dsn``).

May import smtp, tls, discovery, storage, reporting and config; never
inbound, devrelay or app.
"""
