"""twistd glue: ``Options`` and ``makeService`` for ``twistd chatd``.

Every setting of ``chatd.config.SETTINGS`` is an option here; the values
given on the command line win over ``CHATD_*`` variables, which win over
the ``--config`` file.  A bad value stops start-up with one line on stderr
and exit status 1 (not twistd's page of usage text)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from chatd.config import SETTINGS, ConfigError, load_config
from chatd.logs import twistd_log_target
from chatd.service import ChatdService, StartupError, fail_startup


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "chatd: real-time chat and presence over WebSocket, with an HTTP API on the same port."
    )
    optParameters = [["config", None, None, "TOML configuration file (also CHATD_CONFIG)"]] + [
        [s.option, None, None, f"{s.help} (env {s.env})"] for s in SETTINGS
    ]

    def postOptions(self) -> None:
        cli: dict[str, Any] = {
            s.name: self[s.option] for s in SETTINGS if self[s.option] is not None
        }
        if self["config"]:
            cli["config"] = self["config"]
        try:
            self.config = load_config(cli)
        except ConfigError as e:
            fail_startup(str(e))


def makeService(options: Options) -> IService:
    try:
        service = ChatdService(
            options.config,
            exit_on_failure=True,
            log_target=twistd_log_target(getattr(options, "parent", None)),
        )
        service.prepare()
    except StartupError as e:
        fail_startup(str(e))
    return service
