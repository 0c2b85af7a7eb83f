"""Wire bindings: each translates its frames to and from the session
layer's ``(type, id, data)`` and supplies the transport, nothing else."""
