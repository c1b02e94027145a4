"""Sources: pure modules that verify, parse and normalize one kind of inbound request."""
