"""Outgoing mail: RemoteDelivery's configuration, MX routing and the trio SMTP client.

See docs/remote-delivery.md.
"""
