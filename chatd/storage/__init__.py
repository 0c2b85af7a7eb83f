"""Storage: the domain Store interface on SQL databases through adbapi."""
