"""relay: deliver chat and code-hosting webhooks to Letta agents."""

__version__ = "0.1.0"
