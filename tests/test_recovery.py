"""Redis amnesia at scale: the janitor reconciles every processing clip with Redis, not a first batch.

``RECOVERY_STORM=1200`` runs the storm with the janitor's real page size and
re-queue bound, and prints how long each round took.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import redis

from clipqueue.keys import job_key

STORM = int(os.environ.get("RECOVERY_STORM", "130"))


def test_janitor_requeues_every_lost_job_of_a_storm_once_and_leaves_waiting_ones_alone(service_factory):
    from clipqueue.janitor import MAX_REQUEUES, PAGE, run_janitor
    from clipqueue.models import Clip, db
    from clipqueue.queue import enqueue_job, job_list, waiting_clip_ids

    # A short run uses small pages and bounds, so that it still crosses pages and needs two rounds.
    page_size, max_requeues = (PAGE, MAX_REQUEUES) if "RECOVERY_STORM" in os.environ else (40, 100)
    service = service_factory(LEASE_TTL_SECONDS="1", JANITOR_INTERVAL_SECONDS="1",
                              WORKER_HEARTBEAT_SECONDS="0.5")
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    with service.app.app_context():
        rows = [Clip(vod_url="https://vod.test/master.m3u8", start_time=i % 50, end_time=i % 50 + 5,
                     quality="source", mode="copy") for i in range(STORM)]
        db.session.add_all(rows)
        db.session.commit()
        clip_ids = [str(row.id) for row in rows]
        for row in rows:
            assert enqueue_job(row)
        waiting_one = clip_ids[-1]
        # A storm's loss: every queued message but the last, and every other job's metadata besides.
        client.ltrim(job_list(), 0, 0)
        assert waiting_clip_ids() == {waiting_one}
        client.delete(*(job_key(clip_id) for clip_id in clip_ids[:STORM - 1:2]))
        time.sleep(1.2)  # quiet for a lease TTL

        rounds = []
        while len(rounds) < 10 and (len(rounds) < 2 or rounds[-1][0]):
            began = time.monotonic()
            rounds.append((run_janitor(page_size, max_requeues), time.monotonic() - began))
            time.sleep(1)  # more than a heartbeat's interval (a third of the lease TTL) before the next round
        print("\n" + "\n".join(f"janitor round over {STORM} clips: {took:.2f} s, {dict(done)}"
                               for done, took in rounds))
        assert waiting_clip_ids() == set(clip_ids)
    assert rounds[0][0] == {}  # seen lost once: not yet re-queued
    assert rounds[-1][0] == {}  # then nothing is lost any more
    assert all(sum(done.values()) <= max_requeues for done, _ in rounds)
    total = sum((done for done, _ in rounds), start=Counter())
    assert total == {"requeued_lost_metadata": STORM // 2, "requeued_lost_message": STORM - 1 - STORM // 2}
    assert client.llen(job_list()) == STORM  # each lost job queued once more, the waiting one left alone
