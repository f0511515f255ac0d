"""Stores behind URLs: the fsspec filesystem that serves one, what it lets a writer do, its failures as one line.

``s3://`` (s3fs), ``gs://``, ``az://`` … are object stores: no folders, each object replaced whole, and an exclusive
create only through a conditional PUT (``If-None-Match: *``), which the lock relies on and checks
(``spinal.store.lockfile``). ``http(s)://`` is read-only: an HTTP server has no listing SPINAL can rely on, so a
store there is found by its root ``zarr.json`` (``spinal.store.location``). A missing package, missing credentials,
a missing bucket or an endpoint that does not answer is a ``SpinalError`` naming the fix (docs/store-format.md,
"Stores in a bucket").
"""

from __future__ import annotations

from spinal.errors import InputError, StoreError, first_line

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
READ_ONLY = frozenset({"http", "https"})
PACKAGES = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", None), "gcs": ("gcsfs", None),
            "az": ("adlfs", None), "abfs": ("adlfs", None), "abfss": ("adlfs", None), "http": ("aiohttp", None),
            "https": ("aiohttp", None)}  # protocol -> (the package fsspec needs, SPINAL's extra that installs it)


def protocol(path: str) -> str:
    """'local' for a plain path, else the URL's scheme in lower case ('file', 's3', 'http', …)."""
    return path.split("://", 1)[0].lower() if "://" in path else "local"


def is_remote(path: str) -> bool:
    """Served by something other than this machine's file system (not a plain path, not file://)."""
    return protocol(path) not in ("local", "file")


def is_object_store(path: str) -> bool:
    return protocol(path) in OBJECT_STORES


def is_read_only(path: str) -> bool:
    return protocol(path) in READ_ONLY


def options(path: str) -> dict:
    """fsspec storage options: no cached listings for a remote store, which other processes write meanwhile."""
    return {"use_listings_cache": False} if is_remote(path) else {}


def url_to_fs(path: str, **extra):
    """``fsspec.core.url_to_fs`` with ``options``; a missing package or an unknown protocol is one InputError."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(path, **options(path), **extra)
    except ImportError as e:
        raise InputError(missing_package(path, e)) from None
    except ValueError as e:
        if "protocol" in str(e).lower():
            raise InputError(f"{path}: {first_line(e)}; give a local path or a URL fsspec knows (s3://, gs://, "
                             "http://, file://)") from None
        raise


def missing_package(path: str, e: BaseException | None = None) -> str:
    proto = protocol(path)
    pkg, extra = PACKAGES.get(proto, (None, None))
    if pkg is None:
        return f"{path}: {proto}:// needs a package that is not installed ({first_line(e) if e else 'fsspec'})"
    fix = f"pip install {pkg}" + (f" (or pip install 'spinal[{extra}]')" if extra else "")
    return f"{path}: {proto}:// stores need the {pkg} package, which is not installed: {fix}"


def access_error(path: str, e: BaseException) -> StoreError | None:
    """The one-line error for a refusal the user fixes outside SPINAL (credentials, endpoint), or None.

    Recognised by class name through the cause chain, so neither botocore nor aiohttp is imported here.
    """
    seen = e
    while seen is not None:
        name = type(seen).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                    "NoAuthTokenError"):
            return StoreError(f"{path}: no credentials for the bucket ({first_line(seen)}): set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or ~/.aws/credentials) and rerun; nothing "
                              "was touched")
        if name in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return StoreError(f"{path}: the bucket refused these credentials ({first_line(seen)}); nothing was touched")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                    "ServerDisconnectedError", "ConnectionRefusedError"):
            where = " (AWS_ENDPOINT_URL?)" if is_object_store(path) else ""
            return StoreError(f"{path}: cannot reach the server{where}: {first_line(seen)}; nothing was touched")
        seen = seen.__cause__ or seen.__context__
    return None


def refuse_read_only(path: str) -> None:
    """One InputError for an output at a read-only URL (before its location is even read)."""
    if is_read_only(path):
        raise InputError(f"--out {path}: {protocol(path)}:// is read-only; capture to a local folder or a bucket "
                         "(s3://…), then serve that folder over HTTP for reading")


def check_writable(path: str, fs, root: str) -> None:
    """Refuse, before anything is written, a URL no store can be written at: a read-only protocol, or a bucket
    that does not exist (s3fs would create it; SPINAL never creates buckets)."""
    refuse_read_only(path)
    if is_object_store(path):
        bucket = root.split("/", 1)[0]
        try:
            if hasattr(fs, "call_s3"):  # s3fs: HEAD the bucket; 403 may still let us write under a prefix
                try:
                    fs.call_s3("head_bucket", Bucket=bucket)
                    found = True
                except PermissionError:
                    found = True
                except FileNotFoundError:
                    found = False
            else:
                found = fs.exists(bucket)
        except Exception as e:
            raise access_error(path, e) or e
        if not found:
            raise StoreError(f"--out {path}: the bucket {bucket!r} does not exist; create it first (SPINAL never "
                             "creates buckets); nothing was touched")
