"""`read_file` and `list_files` over the task's private copy of the sample documents."""

from __future__ import annotations

from pydantic import BaseModel, Field

from activities.tools.registry import ToolContext


class ReadFileInput(BaseModel):
    path: str = Field(min_length=1, max_length=300, description="file path, e.g. handbook.md")


class ReadFileOutput(BaseModel):
    path: str
    text: str


class ListFilesInput(BaseModel):
    pass


class ListFilesOutput(BaseModel):
    files: list[str]
    text: str


async def read_file(args: ReadFileInput, ctx: ToolContext) -> ReadFileOutput:
    return ReadFileOutput(path=args.path, text=ctx.workspace().read_text(args.path))


async def list_files(args: ListFilesInput, ctx: ToolContext) -> ListFilesOutput:
    files = ctx.workspace().list_files()
    return ListFilesOutput(files=files, text=", ".join(files))
