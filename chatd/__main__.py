"""``python -m chatd``: helper commands beside the daemon.

* ``token USER [--admin] [--ttl SECONDS] [--name NAME]`` mints a JWT with
  the configured secret (or the one the embedded default generated).
* ``check-config [FILE]`` validates a configuration without starting, and
  warns (on stderr, still exit status 0) about settings that weaken a
  safeguard on purpose, as the daemon does at start-up.
"""

from __future__ import annotations

import argparse
import sys

from chatd.auth import AuthError, mint_token
from chatd.config import ConfigError, config_warnings, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chatd", description="chatd helper commands")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="mint a JWT for a user")
    token.add_argument("user", help="user id (the token's sub)")
    token.add_argument("--admin", action="store_true", help="add role=admin (HTTP admin API)")
    token.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds (default 86400)")
    token.add_argument("--name", help="display name claim")
    token.add_argument("--config", help="TOML configuration file")
    token.add_argument("--data-dir", help="chatd data directory (where a generated secret lives)")
    token.add_argument("--jwt-secret", help="shared secret (default: the configured one)")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", nargs="?", help="TOML configuration file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "token":
            if args.ttl <= 0:
                raise ConfigError("invalid --ttl: expected a positive number of seconds")
            if not args.user.strip() or len(args.user) > 128:
                raise ConfigError("invalid user: expected 1 to 128 characters")
            cli = {"config": args.config, "data_dir": args.data_dir, "jwt_secret": args.jwt_secret}
            config = load_config({k: v for k, v in cli.items() if v is not None})
            print(mint_token(config, args.user, admin=args.admin, ttl=args.ttl, name=args.name))
        else:
            config = load_config({"config": args.file} if args.file else {}, create_secret=False)
            for warning in config_warnings(config):
                print(f"chatd: warning: {warning}", file=sys.stderr)
            print("configuration is valid")
    except (ConfigError, AuthError) as e:
        print(f"chatd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
