"""Adapters that let other programs ask the daemon, in their own protocols."""
