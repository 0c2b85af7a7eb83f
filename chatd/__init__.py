"""chatd: a real-time chat and presence daemon on Twisted and Autobahn."""

__version__ = "0.1.0"
