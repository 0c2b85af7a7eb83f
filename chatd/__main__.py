"""``python -m chatd``: helper commands beside the daemon.

* ``token USER [--admin] [--ttl SECONDS] [--name NAME] [chatd options]``
  mints a JWT with the secret the daemon checks: it reads the same
  configuration (every ``twistd chatd`` option, ``CHATD_*``, ``--config``),
  says on stderr which secret it used, and never creates one (only the
  daemon generates the embedded default's secret).
* ``check-config [FILE]`` validates a configuration without starting, and
  warns (on stderr, still exit status 0) about settings that weaken a
  safeguard on purpose, as the daemon does at start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

from chatd.auth import AuthError, mint_token
from chatd.config import (
    ENV_PREFIX,
    SETTINGS,
    Config,
    ConfigError,
    config_warnings,
    generated_secret_path,
    load_config,
    read_generated_secret,
)

_CONFIGURE = "--jwt-secret, CHATD_JWT_SECRET or jwt_secret in the config file"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chatd", description="chatd helper commands")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser(
        "token",
        help="mint a JWT for a user",
        description="Mint a JWT signed with the secret chatd checks. Give the same options,"
        " CHATD_* variables and --config as the daemon.",
    )
    token.add_argument("user", help="user id (the token's sub)")
    token.add_argument("--admin", action="store_true", help="add role=admin (HTTP admin API)")
    token.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds (default 86400)")
    token.add_argument("--name", help="display name claim")
    token.add_argument("--config", help="TOML configuration file (also CHATD_CONFIG)")
    for setting in SETTINGS:
        token.add_argument(f"--{setting.option}", dest=setting.name, help=setting.help)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", nargs="?", help="TOML configuration file")
    return parser


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.ttl <= 0:
        raise ConfigError("invalid --ttl: expected a positive number of seconds")
    if not args.user.strip() or len(args.user) > 128:
        raise ConfigError("invalid user: expected 1 to 128 characters")
    cli: dict[str, Any] = {s.name: getattr(args, s.name) for s in SETTINGS}
    cli["config"] = args.config
    config = load_config(
        {k: v for k, v in cli.items() if v is not None}, environ=environ, create_secret=False
    )
    config, used = _signing_secret(config, cli, environ)
    token = mint_token(config, args.user, admin=args.admin, ttl=args.ttl, name=args.name)
    algorithm = next(a for a in config.jwt_algorithms if a.startswith("HS"))
    print(f"chatd: signed with {algorithm} and {used}", file=sys.stderr)
    return token


def _signing_secret(
    config: Config, cli: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[Config, str]:
    """The config with the secret the daemon checks, and where it came
    from (never the secret itself); refuses rather than inventing one, as
    a token signed with a new secret fails with ``token signature is
    invalid`` and leaves a file the daemon may pick up later."""
    if not any(a.startswith("HS") for a in config.jwt_algorithms):
        raise ConfigError(
            f"cannot mint a token: jwt_algorithms is {','.join(config.jwt_algorithms)} and chatd"
            " holds only the public key (jwt_public_key); sign tokens with the private key where"
            " your app issues them"
        )
    if config.jwt_secret:
        if cli.get("jwt_secret"):
            return config, "the jwt_secret from --jwt-secret"
        if (environ.get(ENV_PREFIX + "JWT_SECRET") or "").strip():
            return config, f"the jwt_secret from {ENV_PREFIX}JWT_SECRET"
        path = cli.get("config") or environ.get(ENV_PREFIX + "CONFIG")
        return config, f"the jwt_secret in config file {path}"
    path = generated_secret_path(config)
    if path is None:
        raise ConfigError(f"cannot mint a token: no jwt_secret is configured ({_CONFIGURE})")
    secret = read_generated_secret(path)
    if secret is None:
        raise ConfigError(
            f"cannot mint a token: no jwt_secret is configured and chatd has not generated one"
            f" yet: start chatd once with this configuration (it writes {path}), or configure"
            f" jwt_secret ({_CONFIGURE})"
        )
    return (
        dataclasses.replace(config, jwt_secret=secret),
        f"the data directory's generated secret {path}",
    )


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        if args.command == "token":
            print(_token(args, environ))
        else:
            config = load_config(
                {"config": args.file} if args.file else {}, environ=environ, create_secret=False
            )
            for warning in config_warnings(config):
                print(f"chatd: warning: {warning}", file=sys.stderr)
            print("configuration is valid")
    except (ConfigError, AuthError) as e:
        print(f"chatd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
