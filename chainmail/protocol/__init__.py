"""Sans-I/O SMTP/LMTP protocol engine: framing, grammar, replies.  No trio, no plugins."""
