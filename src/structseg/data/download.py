"""Fetching and unpacking a data set archive, failing fast and clearly when offline."""
from __future__ import annotations

import tarfile
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from tqdm.auto import tqdm

from structseg.errors import DataError

CONNECT_TIMEOUT_S = 10.0


def download_and_extract(url: str, root: Path, *, hint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Stream the tar archive at ``url`` into ``root``, extract it there and delete it.

    Any network failure is a :class:`DataError` that names the URL and ``hint``
    (what the extracted tree should look like), so users can fetch it by hand.
    """
    root.mkdir(parents=True, exist_ok=True)
    archive = root / Path(url.rsplit("/", 1)[-1] or "download.tar").name
    partial = archive.with_name(archive.name + ".part")
    try:
        with urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length", 0) or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {archive.name}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download {url} ({getattr(exc, 'reason', exc)}); fetch it by hand and extract it into {root} "
            f"so that {hint} exists"
        ) from None
    partial.replace(archive)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract archive ({exc})") from None
    archive.unlink()

