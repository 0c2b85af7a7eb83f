"""The binding-neutral session layer: one ``Session`` per client, shared by
every wire binding (authentication, rate limit, replies, slow consumers)."""
