"""How app/worker_main.py starts Celery's own worker."""

import sys

# Celery's cluster features, which this template does not use: each keeps one more consumer on the
# broker whose reconnect or shutdown path breaks when the broker dies (the heartbeat's publish to a
# dead broker held a soft shutdown for ever; gossip failed to restart after a crash).
SWITCHES = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "app.queues.celery.worker", "worker", *SWITCHES, *argv]
