"""Content-addressed object store for de-identified DICOM files: local folder by default, any fsspec URL if set.

Files are addressed by the SHA-256 of their bytes (`<root>/<sha[:2]>/<sha>.dcm`), so storing the same file twice
is a no-op and a URI always names exactly one content.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from careloop.settings import Settings


class ObjectStore:
    """`put(bytes, sha256) -> uri`, `get(uri) -> bytes`; writes are atomic (temp file + rename, or one object PUT)."""

    def __init__(self, settings: Settings) -> None:
        url = getattr(settings, "object_store_url", None)
        self._fs = None
        if url and not url.startswith("file://"):
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(url)
            self._local = None
        else:
            self._local = Path(unquote(urlparse(url).path)) if url else settings.path("objects", "dicom")
            self._local.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, sha256: str, *, verified: bool = False) -> str:
        """`verified=True`: the caller computed `sha256` from these very bytes (no second hash of the file)."""
        if not verified and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise ValueError("object store: sha256 does not match the data")
        sha = sha256.lower()
        if self._fs is not None:
            path = f"{self._root.rstrip('/')}/{sha[:2]}/{sha}.dcm"
            if not self._fs.exists(path):
                self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                self._fs.pipe_file(path, data)
            return self._fs.unstrip_protocol(path)
        assert self._local is not None
        target = self._local / sha[:2] / f"{sha}.dcm"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".dcm")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return target.as_uri()

    def get(self, uri: str) -> bytes:
        if uri.startswith("file://"):
            return Path(unquote(urlparse(uri).path)).read_bytes()
        if "://" not in uri:
            return Path(uri).read_bytes()
        import fsspec

        with fsspec.open(uri, "rb") as fh:
            return fh.read()
