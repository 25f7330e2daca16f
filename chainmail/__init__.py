"""chainmail: a mail server framework for Python (SMTP and LMTP, in the model of Apache James)."""

__version__ = "0.1.0"
