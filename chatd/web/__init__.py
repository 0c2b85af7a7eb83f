"""HTTP: the twisted.web site that serves /ws, health and (later) the API."""
