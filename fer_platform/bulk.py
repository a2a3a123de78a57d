"""`fer-platform bulk-load`: the first load of a large landing folder as one Dagster backfill.

It asks the running webserver (`fer-platform dev`, or a deployment's) to backfill the
``bulk_load`` job over today's partitions of the emotions that have pending files. The
backfill daemon submits one run per partition to the run queue, which bounds how many run at
once (dagster.yaml: max_concurrent_runs and the fer/bulk tag limit); each run loads every
pending file of its emotion, in batches, with progress in its logs. Progress of the whole
backfill shows on the webserver's Backfills page.
"""

import json
import sys
import time
import urllib.error
import urllib.request

from fer_platform.core.errors import FerError

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on UnauthorizedError { message }
  }
}"""

STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions unfinishedRuns { id } runs { id status } }
    ... on PythonError { message }
  }
}"""

TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def graphql(url: str, query: str, variables: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
    except (urllib.error.URLError, OSError) as exc:
        raise FerError(f"cannot reach the Dagster webserver at {url}: {getattr(exc, 'reason', exc)} "
                       "(start it with `fer-platform dev`)") from None  # fmt: skip
    if body.get("errors"):
        raise FerError(f"the Dagster webserver refused the request: {body['errors'][0].get('message')}")
    return body["data"]


def pending_partitions() -> tuple[list[str], int]:
    """Today's partition keys of the emotions that have landing files not in the load log yet."""
    from fer_platform.core.ingest import pending_files
    from fer_platform.core.layout import route
    from fer_platform.partitions import partition_key, utc_today
    from fer_platform.resources.environments import resolved_resources

    res = resolved_resources(("landing", "postgres"))
    pending, _ = pending_files(res["landing"].storage(), res["postgres"].get_dsn())
    emotions = sorted({route(e.key).emotion for e in pending} - {None})
    today = utc_today()
    return [str(partition_key(e, today)) for e in emotions], len(pending)


def run(host: str, port: int, wait: bool, timeout: float = 3600) -> int:
    url = f"http://{host}:{port}/graphql"
    keys, files = pending_partitions()
    if not keys:
        print("nothing to load: every landing file is in the load log")
        return 0
    params = {
        "selector": {
            "partitionSetName": "bulk_load_partition_set",
            "repositorySelector": {"repositoryLocationName": "fer_platform", "repositoryName": "__repository__"},
        },
        "partitionNames": keys,
        "tags": [{"key": "fer/bulk", "value": "true"}],
        "title": f"bulk load of {files} files",
    }
    out = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if out["__typename"] != "LaunchBackfillSuccess":
        raise FerError(f"the backfill was not launched: {out['__typename']}: {out.get('message', '')}")
    backfill = out["backfillId"]
    print(f"bulk load of {files} pending files: backfill {backfill} over {len(keys)} partitions "
          f"({', '.join(keys)}); progress: http://{host}:{port}/overview/backfills/{backfill}", flush=True)  # fmt: skip
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = graphql(url, STATUS, {"id": backfill})["partitionBackfillOrError"]
        if state["__typename"] != "PartitionBackfill":
            raise FerError(f"cannot read backfill {backfill}: {state.get('message', state['__typename'])}")
        runs = state.get("runs") or []
        if state["status"] in TERMINAL and not state.get("unfinishedRuns") and len(runs) >= len(keys):
            failed = [r["id"] for r in runs if r["status"] != "SUCCESS"]
            print(f"backfill {backfill}: {state['status']}, {len(runs) - len(failed)}/{len(runs)} runs succeeded")
            return 1 if failed or state["status"] not in ("COMPLETED", "COMPLETED_SUCCESS") else 0
        time.sleep(2)
    print(f"backfill {backfill} still running after {timeout:.0f} s", file=sys.stderr)
    return 1
