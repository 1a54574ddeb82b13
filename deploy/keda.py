"""KEDA's own schemas, fetched once per machine from the Go module proxy and checked.

The ScaledObject and TriggerAuthentication CRDs (their OpenAPI schemas) and the Temporal
scaler's source (the metadata keys it reads) come from the module zip of one pinned KEDA
release; nothing of KEDA is committed here. The zip must have the pinned sha256, and the
files extracted from it are checked again each time they are read from the cache
(~/.cache/keel/keda/<version>/), so a changed release or a damaged cache is an error, never
a silently different schema.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

VERSION = "v2.21.0"  # the Temporal scaler exists from v2.17
MODULE = "github.com/kedacore/keda/v2"
ZIP_URL = f"https://proxy.golang.org/{MODULE}/@v/{VERSION}.zip"
ZIP_SHA256 = "74b59fe16144250748b716d6dc8789dee52d26164daab732145bed60456013a4"
# path inside the zip (under MODULE@VERSION/) -> sha256 of that file
FILES = {
    "config/crd/bases/keda.sh_scaledobjects.yaml": (
        "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80"
    ),
    "config/crd/bases/keda.sh_triggerauthentications.yaml": (
        "ed59ab37b2fa9a18119484a3dbd849b0b18ed25e1aea91d9f1305d4da2215bd8"
    ),
    "pkg/scalers/temporal_scaler.go": (
        "e1231daddaa0b79899d242b535c552e7ba28e502b17ffd9977fd26570f74a0be"
    ),
}
DOWNLOAD_TIMEOUT_S = 120


class KedaDownloadError(RuntimeError):
    """The KEDA files could not be fetched or are not the pinned ones; says what to do."""


@dataclass(frozen=True)
class KedaFiles:
    scaled_objects_crd: Path
    trigger_authentications_crd: Path
    temporal_scaler_go: Path


def cache_dir() -> Path:
    return Path.home() / ".cache" / "keel" / "keda" / VERSION


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_zip(data: bytes, expected: str = ZIP_SHA256) -> None:
    got = _sha256(data)
    if got != expected:
        raise KedaDownloadError(
            f"{ZIP_URL}: sha256 {got}, expected {expected}: the download is not the pinned "
            f"KEDA {VERSION} module; retry, and if it persists check the proxy (GOPROXY "
            "mirrors serve the same bytes for a version)"
        )


def _files(root: Path) -> KedaFiles:
    paths = [root / Path(name).name for name in FILES]
    return KedaFiles(*paths)


def _cached(root: Path) -> bool:
    """Whether every file is in the cache with its pinned sha256."""
    for name, sha in FILES.items():
        path = root / Path(name).name
        if not path.is_file() or _sha256(path.read_bytes()) != sha:
            return False
    return True


def fetch(root: Path | None = None) -> KedaFiles:
    """The KEDA files, from the cache, or downloaded, checked and cached first."""
    root = root or cache_dir()
    if _cached(root):
        return _files(root)
    try:
        with urllib.request.urlopen(ZIP_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise KedaDownloadError(
            f"cannot download {ZIP_URL} ({err}); the manifests' KEDA check needs it once per "
            f"machine (cached in {root})"
        ) from None
    check_zip(data)
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name, sha in FILES.items():
            content = archive.read(f"{MODULE}@{VERSION}/{name}")
            if _sha256(content) != sha:
                raise KedaDownloadError(f"{name} in {ZIP_URL} is not the pinned file")
            target = root / Path(name).name
            partial = target.with_suffix(target.suffix + f".{os.getpid()}.part")
            partial.write_bytes(content)
            partial.replace(target)  # whole files only, even with two test runs at once
    return _files(root)
