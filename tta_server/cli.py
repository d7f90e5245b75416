"""``tta-server serve``: start the server (one uvicorn worker: stream state lives in one process).

Every setting is a flag (``--memory-budget-bytes``), a ``TTA_*`` environment variable
(``TTA_MEMORY_BUDGET_BYTES``) or a key of the ``--config-file`` YAML/TOML file; flags win over the
environment, which wins over the file. ``tta-server serve --help`` lists them all with defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import ValidationError

from adapters.errors import AdapterError, describe_validation
from tta_server.http_protocol import head_deadline_protocol
from tta_server.settings import Settings

if TYPE_CHECKING:
    from tta_server.deps import Services

ALIASES = {
    "default_adapter": ["--adapter"],
    "default_adapter_config": ["--adapter-config"],
    "config_file": ["--config"],
}


def _parser_for(value: str, annotation: Any) -> Any:
    text = str(annotation)
    if "dict" in text or "list" in text:
        return json.loads(value)
    return value  # pydantic parses numbers, booleans and paths from strings


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = "JSON" if any(t in str(field.annotation) for t in ("dict", "list")) else None
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = json.dumps(default) if isinstance(default, dict | list) else default
        help_text = f"{field.description or name.replace('_', ' ')} (default: {shown}; env TTA_{name.upper()})"
        parser.add_argument(
            flag,
            *ALIASES.get(name, []),
            dest=name,
            metavar=kind or name.upper(),
            type=partial(_parser_for, annotation=field.annotation),
            help=help_text.replace("%", "%%"),
        )


def uvicorn_config(settings: Settings, services: Services | None = None) -> uvicorn.Config:
    from tta_server.app import create_app

    return uvicorn.Config(
        create_app(settings, services),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        access_log=False,  # tta_server.access logs every request with its id, stream and adapter
        log_config=None,
        http=head_deadline_protocol(settings.request_head_timeout_s),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tta-server", description="Continual test-time adaptation server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="start the HTTP server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_arguments(serve)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.exit(f"tta-server: invalid settings: {describe_validation(exc.errors())}")
    except ValueError as exc:
        sys.exit(f"tta-server: invalid settings: {exc}")
    from tta_server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from tta_server.app import build_services

    try:  # before uvicorn: a checkpoint that cannot load is one line, not a lifespan traceback
        services = build_services(settings)
    except (AdapterError, OSError, ValueError) as exc:
        sys.exit(f"tta-server: cannot start: {exc}")
    uvicorn.Server(uvicorn_config(settings, services)).run()


if __name__ == "__main__":
    main()
