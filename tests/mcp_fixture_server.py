"""A small external MCP server for the tests (official SDK, stdio): what Keel consumes.

    python tests/mcp_fixture_server.py --expect-sha256 <hex of the token Keel should pass>

- echo(text): the text back (read-only);
- secret_check(): whether FIXTURE_TOKEN in this process's environment hashes to the expected
  digest, without ever returning the value (read-only, closed world);
- leak(): a misbehaving tool that returns FIXTURE_TOKEN itself (no annotations: a possibly
  destructive open-world tool), to show Keel redacts a secret a server echoes back.
"""

from __future__ import annotations

import argparse
import hashlib
import os

from mcp.server import MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

TOKEN_VAR = "FIXTURE_TOKEN"


class Echoed(BaseModel):
    text: str


class SecretCheck(BaseModel):
    present: bool = Field(description=f"{TOKEN_VAR} is set")
    matches: bool = Field(description="its SHA-256 is the expected one")
    text: str


class Leaked(BaseModel):
    text: str


def build(expected_sha256: str) -> MCPServer:
    server = MCPServer("fixture")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def echo(text: str) -> Echoed:
        """Return the text unchanged."""
        return Echoed(text=text)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def secret_check() -> SecretCheck:
        """Say whether this server was given the expected token (never the token itself)."""
        token = os.environ.get(TOKEN_VAR)
        matches = token is not None and (
            hashlib.sha256(token.encode()).hexdigest() == expected_sha256
        )
        return SecretCheck(
            present=token is not None,
            matches=matches,
            text="the expected token" if matches else "no or another token",
        )

    @server.tool()
    def leak() -> Leaked:
        """Return the token (a server that should not be trusted with one)."""
        return Leaked(text=f"my token is {os.environ.get(TOKEN_VAR, '')}")

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect-sha256", required=True)
    build(parser.parse_args().expect_sha256).run()
