"""trio server core: listeners, connection limits, timeouts, graceful drain."""
