"""The output location: a local directory, or a URL that pyarrow or fsspec can open
(`s3://bucket/prep`, `gs://...`, `hdfs://...`, `memory://...`).

Every file appears under its final name only when complete: it is written under a temporary
name and moved. Locally the move is an atomic rename after an fsync; on object stores a move is
a server-side copy, still never exposing a partial object under the final name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_url(location: str) -> bool:
    return "://" in location


class OutputStore:
    def __init__(self, location: str) -> None:
        self.location = location
        self.is_local = not is_url(location) or location.startswith("file://")
        if not is_url(location):
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).absolute())
        else:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(location)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                import fsspec

                fsspec_fs, root = fsspec.core.url_to_fs(location)
                self.fs, self.root = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), root
        self.root = self.root.rstrip("/")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def read_parquet(self, relative: str, schema: pa.Schema | None = None) -> pa.Table:
        return pq.read_table(self.path(relative), filesystem=self.fs, schema=schema)

    def make_dirs(self, relative: str) -> None:
        self.fs.create_dir(self.path(relative), recursive=True)

    def list_names(self, relative: str) -> list[str]:
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector)]

    def delete(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_file(self.path(relative))

    def delete_dir(self, relative: str) -> None:
        if self.fs.get_file_info(self.path(relative)).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(relative))

    @contextmanager
    def atomic_output(self, relative: str) -> Iterator[BinaryIO]:
        """A binary stream whose content appears under `relative` only if the block succeeds."""
        folder, _, name = relative.rpartition("/")
        temporary = f"{folder}/" if folder else ""
        temporary += f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if folder:
            self.make_dirs(folder)
        try:
            if self.is_local:
                with open(self.path(temporary), "wb") as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())  # durable before the rename makes it count
                os.replace(self.path(temporary), self.path(relative))
            else:
                with self.fs.open_output_stream(self.path(temporary)) as stream:
                    yield stream
                self.fs.move(self.path(temporary), self.path(relative))
        finally:
            self.delete(temporary)

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self.atomic_output(relative) as stream:
            stream.write(data)

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        with self.atomic_output(relative) as stream:
            pq.write_table(table, stream)

    def remove_temporaries(self, relative: str) -> None:
        """Temporary files a killed run left in `relative`."""
        for name in self.list_names(relative):
            if name.startswith(".") and ".tmp-" in name:
                self.delete(f"{relative}/{name}")
