# The twistd plugin for chatd.  Kept to names only: every getPlugins() scan
# imports this module, so it must not import chatd itself.
from twisted.application.service import ServiceMaker

chatd = ServiceMaker(
    "chatd",
    "chatd.tap",
    "Real-time chat and presence daemon (WebSocket + HTTP API)",
    "chatd",
)
