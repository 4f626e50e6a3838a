"""A campaign run through the Python client that openapi-python-client generated from the live
sender's /openapi.json: post accruals, follow the job to its end, read its results and a member's
balance, reverse it, and read the balance again. Only the generated client talks to the API.

Usage: campaign.py BASE_URL API_KEY (the generated package `accrual_client` on PYTHONPATH).
Prints one JSON object with what it saw; exits non-zero with a message when a step fails.
"""

import json
import sys
import time
import uuid

from accrual_client import AuthenticatedClient
from accrual_client.api.accruals import create_accrual_job
from accrual_client.api.jobs import get_job, get_job_results, reverse_job
from accrual_client.api.members import get_member_balance
from accrual_client.models import AccrualItem

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def follow(client, job_id, seconds=90):
    """Reads the job until its status is final; returns its view."""
    deadline = time.monotonic() + seconds
    while True:
        view = get_job.sync(job_id=job_id, client=client)
        if view is None:
            fail(f"get_job({job_id}) answered no job view")
        status = str(view.status)
        if status in FINAL:
            return view
        if time.monotonic() > deadline:
            fail(f"job {job_id} still {status} after {seconds} s")
        time.sleep(0.2)


def balance_of(client, member_id, point_type):
    answer = get_member_balance.sync(member_id=member_id, client=client)
    if answer is None:
        fail(f"get_member_balance({member_id}) answered nothing")
    for entry in answer.point_types:
        if entry.point_type == point_type:
            return entry.active
    return 0


def main():
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = AuthenticatedClient(base_url=base_url, token=api_key, raise_on_unexpected_status=True)
    campaign = f"generated-{uuid.uuid4().hex[:8]}"
    items = [
        AccrualItem(member_id=f"{campaign}-m1", point_type="WELFARE", amount=10),
        AccrualItem(member_id=f"{campaign}-m1", point_type="WELFARE", amount=5),
        AccrualItem(member_id=f"{campaign}-m2", point_type="WELFARE", amount=7),
    ]
    posted = create_accrual_job.sync_detailed(client=client, body=items, label=campaign)
    if posted.status_code != 202:
        fail(f"create_accrual_job answered {posted.status_code}: {posted.content!r}")
    job_id = posted.parsed.job_id
    job = follow(client, job_id)

    results = get_job_results.sync_detailed(job_id=job_id, client=client)
    if results.status_code != 200:
        fail(f"get_job_results answered {results.status_code}: {results.content!r}")
    outcomes = [json.loads(line)["outcome"] for line in results.content.decode().splitlines() if line]

    credited = balance_of(client, f"{campaign}-m1", "WELFARE")

    reversed_ = reverse_job.sync_detailed(job_id=job_id, client=client)
    if reversed_.status_code != 202:
        fail(f"reverse_job answered {reversed_.status_code}: {reversed_.content!r}")
    reversal = follow(client, reversed_.parsed.job_id)
    after = balance_of(client, f"{campaign}-m1", "WELFARE")

    print(
        json.dumps(
            {
                "job_status": str(job.status),
                "accepted": posted.parsed.accepted,
                "outcomes": outcomes,
                "balance_credited": credited,
                "reversal_status": str(reversal.status),
                "balance_after_reversal": after,
            }
        )
    )


if __name__ == "__main__":
    main()
