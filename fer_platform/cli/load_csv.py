"""`fer-platform load-csv PATH`: a FER2013 challenge CSV anywhere on disk, expanded into the environment's
landing zone.

The CSV is read in place, streamed (core/challenge.py), with the landing CSVs' rules: each good row becomes
a 48x48 image in the landing zone's staging folder ``_csv/<the path, slashes made safe>/``, each malformed
row is quarantined with its row number in the load log, and the checkpoint (keyed by the file's absolute
path) makes it exactly once: the same file again stages nothing, an appended one only its new rows. The
landing sensor (`fer-platform dev`) or `fer-platform demo` then loads the staged images.
"""

import json
import sys
from pathlib import Path

from fer_platform.cli.instance import current_resources
from fer_platform.core.challenge import LOGGED_ROWS, expand_csv
from fer_platform.core.home import Home
from fer_platform.core.storage import Storage


def run(home: Home, path: str, as_json: bool = False) -> int:
    full = Path(path).expanduser().resolve()
    if not full.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    from fer_platform.partitions import utc_today  # deferred: loads dagster

    res = current_resources(home, ("landing", "lake", "postgres"))  # the environment's, as runs see them
    landing = res["landing"].storage()
    source = Storage(str(full.parent))
    report = expand_csv(
        source, full.name, landing, res["lake"].storage(), res["postgres"].get_dsn(), utc_today()
    )
    if as_json:
        print(json.dumps({**report.summary(), "landing": landing.uri(report.staging)}))
    else:
        print(report.line())
        for _row, reason in report.quarantined[:LOGGED_ROWS]:
            print(f"  quarantined {reason}")
        if len(report.quarantined) > LOGGED_ROWS:
            print(f"  ... and {len(report.quarantined) - LOGGED_ROWS} more (every one is in the load log)")
        if report.good:
            print(
                f"next: the landing sensor (fer-platform dev) loads them from {landing.uri(report.staging)}, "
                "or run fer-platform demo"
            )
    return 2 if report.status == "quarantined" else 0
