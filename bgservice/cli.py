"""The project's command line: `bgremove` (or `python -m bgservice`).

    bgremove download [NAME]   fetch a model's weights from its official source and verify them
    bgremove models            list the models the service knows
    bgremove serve             the development server (production: gunicorn -c gunicorn_conf.py)

Defaults come from the same settings as the service (GlobalVariables: U2NET_MODEL,
U2NET_MODELS_DIR, ...), so `bgremove download` fetches exactly what the service will look for.
Exit codes: 0 done, 1 the operation failed, 2 bad usage or settings.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from GlobalVariables import Settings, SettingsError, configure_logging
from u2net.registry import MODELS, UnknownModel, get_spec
from u2net.weights import WeightsError, default_weights_path, download

log = logging.getLogger("u2net_service.cli")


def _cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    spec = get_spec(args.name or settings.model)
    dest = default_weights_path(args.models_dir or settings.models_dir, spec)
    if dest.exists() and not args.force:
        print(f"{dest} already exists (use --force to download it again)")
        return 0
    digest = download(spec, dest, urls=tuple(args.url) if args.url else None,
                      sha256=args.sha256, progress=not args.quiet)
    print(f"saved {dest} (sha256 {digest})")
    return 0


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    for spec in MODELS.values():
        marker = "*" if spec.name == settings.model else " "
        print(f"{marker} {spec.name:16s} {spec.architecture:7s} {spec.size_mb:6.1f} MB  "
              f"{spec.description}")
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import API

    return API.main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgremove", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    get = sub.add_parser("download", help="download a model's weights and verify them")
    get.add_argument("name", nargs="?", help="model name (default: $U2NET_MODEL or u2net_human_seg)")
    get.add_argument("--models-dir", type=Path,
                     help="where weights live (default: $U2NET_MODELS_DIR or saved_models/)")
    get.add_argument("--url", action="append",
                     help="fetch from this URL instead of the official source (repeatable; "
                          "file:///path works for a copy you already have)")
    get.add_argument("--sha256", default=os.environ.get("U2NET_WEIGHTS_SHA256") or None,
                     help="expected SHA-256 (default: $U2NET_WEIGHTS_SHA256, else the registry's)")
    get.add_argument("--force", action="store_true", help="download even if the file exists")
    get.add_argument("--quiet", action="store_true", help="no progress bar")
    get.set_defaults(run=_cmd_download)

    sub.add_parser("models", help="list the known models").set_defaults(run=_cmd_models)
    sub.add_parser("serve", help="run the development server on $PORT (5002)").set_defaults(
        run=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        return args.run(args, settings)
    except (SettingsError, UnknownModel) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
