"""The zray web dashboard: a read-only HTTP server (``server.Dashboard``), the
pure functions that shape what it sends (``views``, ``layout``)
and the single-page app it serves (``static/``)."""
