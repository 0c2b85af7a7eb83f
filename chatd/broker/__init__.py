"""Brokers: how an event published on a channel reaches every node that has
local connections listening on it."""
