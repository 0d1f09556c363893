"""The broker transport every clipqueue process uses: kombu's Redis transport, with the job queue's
lists named so that a normal job waits in ``clip_extraction_jobs`` itself.

How kombu's Redis transport orders priorities: a queue is one Redis list per
priority step; a message of priority p (0-9, lower is sooner on Redis) goes to
the list of the highest step <= p. A consumer's one BRPOP names every list of
its queues, steps in ascending order, and Redis pops from the first non-empty
list; within a list LPUSH + BRPOP is FIFO. Stock kombu names step 0's list
after the queue itself and the others ``{queue}\\x06\\x16{step}``, so the
plain list would hold the highest priority. The contract says jobs wait in the
list ``clip_extraction_jobs``, and almost every job is normal: here the normal
step's list keeps the plain name, and the other steps of the job queue (high
before it, low after it) are the sub-lists. The order BRPOP reads them in is
unchanged. Other queues keep kombu's names.

Every process (web, workers, beat, Flower) must use this transport and these
steps to see the same lists: :func:`clipqueue.celery_app.celery_init_app` sets both.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

from clipqueue.keys import JOB_QUEUE
from clipqueue.models import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL

PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
# A clip's priority as the message's broker priority (lower is sooner).
BROKER_PRIORITIES = {PRIORITY_HIGH: 0, PRIORITY_NORMAL: 3, PRIORITY_LOW: 6}
# The step whose list is clip_extraction_jobs itself.
PLAIN_STEP = BROKER_PRIORITIES[PRIORITY_NORMAL]

TRANSPORT = f"{__name__}:Transport"


def job_step_list(step: int) -> str:
    """The Redis list of the job queue's priority ``step``."""
    return JOB_QUEUE if step == PLAIN_STEP else f"{JOB_QUEUE}{PRIORITY_SEP}{step}"


class Channel(kombu_redis.Channel):
    def _q_for_pri(self, queue, pri):
        if queue == JOB_QUEUE:
            return job_step_list(self.priority(pri))
        return super()._q_for_pri(queue, pri)


class Transport(kombu_redis.Transport):
    Channel = Channel
