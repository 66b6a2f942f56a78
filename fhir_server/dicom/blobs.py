"""Where DICOM Part 10 files are kept, unchanged: one interface, a filesystem implementation under the
data directory. An object store (S3, MinIO) implements the same four methods."""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path


class BlobStore(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically: a reader sees the whole blob or none."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...


class FileBlobStore(BlobStore):
    def __init__(self, root: Path):
        self.root = Path(root)
        self._root = os.path.abspath(root)

    def _path(self, key: str) -> Path:
        # Lexical check (no file system calls: Path.resolve() was a twentieth of the SCP's CPU); the keys
        # are made of UIDs, and links inside the store are not the server's to follow or refuse.
        path = os.path.normpath(os.path.join(self._root, key))
        if not path.startswith(self._root + os.sep):
            raise ValueError(f"blob key {key!r} leaves the blob store")
        return Path(path)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside, fsync, then rename: a crash leaves either no file or the whole file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{study_uid}/{series_uid}/{sop_uid}.dcm"
