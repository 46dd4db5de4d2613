"""``voxflow blocks register | save-storage``: the Prefect Block types for storage and models."""

from __future__ import annotations

import argparse
import os


def register(args: argparse.Namespace) -> int:
    from voxflow.blocks import register_block_types

    for slug in register_block_types():
        print(f"registered block type {slug}")
    return 0


def save_storage(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from voxflow.blocks.storage import VoxflowStorage

    def secret(name: str) -> SecretStr | None:
        return SecretStr(os.environ[name]) if os.environ.get(name) else None

    block = VoxflowStorage(
        location=args.location,
        endpoint_url=args.endpoint_url,
        region=args.region,
        access_key_id=secret("AWS_ACCESS_KEY_ID"),
        secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
        session_token=secret("AWS_SESSION_TOKEN"),
    )
    block.save(args.name, overwrite=True)
    print(f"saved voxflow-storage/{args.name} ({args.location})")
    return 0


def add_blocks(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="block_command", required=True)
    p = commands.add_parser("register", help="register the voxflow Block types with the Prefect API")
    p.set_defaults(func=register)
    p = commands.add_parser(
        "save-storage", help="save a voxflow-storage Block (credentials from AWS_ACCESS_KEY_ID etc.)"
    )
    p.add_argument("name")
    p.add_argument("--location", required=True, help="local folder or s3://bucket/prefix")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, R2...)")
    p.add_argument("--region")
    p.set_defaults(func=save_storage)


COMMANDS = {"blocks": add_blocks}
