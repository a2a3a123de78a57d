"""Where things live: the landing layout, the lake layout, and how a landing key routes.

The landing zone follows the Kaggle FER2013 layout, ``<split>/<emotion>/<name>``
(``split`` optional). The lake mirrors it under ``raw/images/fer2013/``.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
from dataclasses import dataclass

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")  # FER2013's Usage values

# Lake folders (relative to the lake root).
RAW_IMAGES = "raw/images/fer2013"
RAW_MANIFEST = "raw/manifest"
BRONZE_IMAGES = "bronze/images"
SILVER_EMBEDDINGS = "silver/embeddings"
GOLD = "gold"
INDEX = "index"
MODELS = "models"
QUARANTINE = "quarantine"
META = "_meta"
LAKE_FOLDERS = ("raw", "bronze", "silver", "gold", "index", "models", "quarantine", "_meta")

# Landing folders the listing never descends into: the archive of processed files.
LANDING_ARCHIVE = "_archive"
# The landing folder where a FER2013 challenge CSV is expanded into images, one folder per CSV:
# ``_csv/<csv>/<split>/<emotion>/<Usage>_<row>.png`` (core/challenge.py); they load like any image.
CSV_STAGING = "_csv"
CSV_SOURCE = "a challenge CSV: expanded into images under _csv/ (core/challenge.py), not loaded as a file"
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})


@dataclass(frozen=True)
class Route:
    """What a landing key means.

    ``ignored`` keys are not part of the data set (hidden files, OS junk, stray
    files at the landing root) and never reach the load log. Every other key
    goes to the load log; ``problem`` is set when its place in the layout is
    wrong, and it is quarantined with that reason.
    """

    key: str
    emotion: str | None
    split: str | None
    name: str
    ignored: str | None = None
    problem: str | None = None


@functools.lru_cache(
    maxsize=1 << 18
)  # a pure function of the key: the sensor routes every listed key per tick
def route(key: str) -> Route:
    """Route a landing key (posix path relative to the landing root)."""
    key = key.strip("/")
    parts = [p for p in key.split("/") if p]
    name = parts[-1] if parts else ""
    if any(p.startswith(".") for p in parts) or name.lower() in JUNK_NAMES:
        return Route(key, None, None, name, ignored="hidden or system file")
    if parts and parts[0] == LANDING_ARCHIVE:
        return Route(key, None, None, name, ignored="archive of processed files")
    if is_csv_source(key):
        return Route(key, None, None, name, ignored=CSV_SOURCE)
    if len(parts) == 1:
        return Route(key, None, None, name, ignored="stray file at the landing root")
    if parts[0] == CSV_STAGING:  # an image expanded from a challenge CSV: _csv/<csv>/[split/]emotion/name
        if len(parts) < 4:
            problem = "not an image expanded from a challenge CSV: expected _csv/<csv>/[split/]emotion/name"
            return Route(key, None, None, name, problem=problem)
        parts = parts[2:]

    folder = parts[-2].lower()
    emotion = folder if folder in EMOTIONS else None
    split = parts[-3].lower() if len(parts) >= 3 else None
    problem = None
    if emotion is None:
        problem = f"unknown emotion folder '{parts[-2]}' (expected one of {', '.join(EMOTIONS)})"
    elif len(parts) > 3:
        problem = f"nested too deep: expected [split/]emotion/name, got {len(parts) - 1} folders"
    elif split is not None and split not in SPLITS:
        problem = f"unknown split folder '{parts[-3]}' (expected {' or '.join(SPLITS)})"
        split = None
    return Route(key, emotion, split, name, problem=problem)


def is_csv_source(key: str) -> bool:
    """Whether a landing key is a CSV to expand: ``*.csv`` anywhere but hidden, in the archive or staging."""
    if key.rstrip("/")[-4:].lower() != ".csv":  # the suffix first: every landing file of a tick comes here
        return False
    parts = [p for p in key.strip("/").split("/") if p]
    return (
        bool(parts)
        and parts[-1].lower().endswith(".csv")
        and not any(p.startswith(".") for p in parts)
        and parts[0] not in (LANDING_ARCHIVE, CSV_STAGING)
    )


def usage_of(name: str) -> str | None:
    """The Usage a file name carries (``Training_``, ``PublicTest_``, ``PrivateTest_``: a challenge CSV
    row's staged image, and Kaggle's own JPEG naming), else None."""
    base = posixpath.basename(name)
    return next((u for u in USAGES if base.startswith(f"{u}_")), None)


def csv_staging(source: str) -> str:
    """The staging folder of a CSV (its landing key, or a path on disk): ``_csv/<the path, slashes made
    safe>``, the name fitted."""
    return posixpath.join(CSV_STAGING, fit_name(source.strip("/").replace("/", "~")))


# A lake name leaves room for the temporary name of a write (".<name>.<pid>-<8 hex>.tmp", 24 bytes more)
# within the 255 bytes most filesystems allow in a name; the original name stays in the load log and bronze.
MAX_LAKE_NAME_BYTES = 200


def fit_name(name: str) -> str:
    """``name``, or when it is longer than MAX_LAKE_NAME_BYTES (UTF-8), its start cut on a character
    boundary plus a digest of the whole name, with its extension: distinct long names stay distinct."""
    if len(name.encode()) <= MAX_LAKE_NAME_BYTES:
        return name
    stem, ext = posixpath.splitext(name)
    ext = ext if len(ext.encode()) <= 16 else ""
    tag = "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    room = MAX_LAKE_NAME_BYTES - len(tag.encode()) - len(ext.encode())
    head = stem.encode()[:room].decode("utf-8", errors="ignore")
    return f"{head}{tag}{ext}"


def raw_image_path(split: str | None, emotion: str, name: str) -> str:
    """Lake path of a loaded image: the landing hierarchy under raw/images/fer2013 (the name fitted)."""
    return posixpath.join(RAW_IMAGES, *(p for p in (split, emotion, fit_name(name)) if p))


def versioned_name(name: str, sha256: str) -> str:
    """Name of a new version of a file whose lake path already holds other content."""
    folder, base = posixpath.split(name)
    stem, ext = posixpath.splitext(base)
    return posixpath.join(folder, fit_name(f"{stem}.{sha256[:12]}{ext}"))


def quarantine_path(load_date: str, key: str) -> str:
    return posixpath.join(QUARANTINE, load_date, *(fit_name(p) for p in key.split("/") if p))


def hive_dir(prefix: str, emotion: str, load_date: str) -> str:
    return f"{prefix}/emotion={emotion}/load_date={load_date}"
