"""``tta-server serve``: start the server (one uvicorn worker: stream state lives in one process)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tta-server", description="Continual test-time adaptation server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--config", dest="config_file", help="YAML or TOML settings file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--model", help="registered model name")
    serve.add_argument("--model-kwargs", type=json.loads, help='JSON, e.g. \'{"checkpoint": "Standard.pt"}\'')
    serve.add_argument("--adapter", dest="default_adapter", help="default adapter for new streams")
    serve.add_argument("--adapter-config", dest="default_adapter_config", type=json.loads, help="JSON adapter config")
    serve.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    import uvicorn

    from tta_server.app import create_app
    from tta_server.settings import Settings

    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("command", "log_level")
    }
    try:
        settings = Settings(**overrides)
    except (ValidationError, ValueError) as exc:
        sys.exit(f"invalid settings: {exc}")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1, log_level=args.log_level)


if __name__ == "__main__":
    main()
