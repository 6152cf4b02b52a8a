"""Dramatiq, bare or stock. Stock: sentry-sdk's DramatiqIntegration and Dramatiq's own Prometheus
middleware; OpenTelemetry has no Dramatiq instrumentation. Dramatiq's model is a module that
builds its broker on import, and Sentry's integration patches the broker, so both start here."""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, default_middleware

from bench.queue_peers import STOCK, run_send_email

middleware: list[Middleware] = [m() for m in default_middleware]
if STOCK:
    from dramatiq.middleware.prometheus import Prometheus
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration

    from bench.queue_peers.stock import start_sentry

    start_sentry(DramatiqIntegration())
    middleware.append(Prometheus())

broker = RedisBroker(url=os.environ["BROKER_URL"], middleware=middleware)
dramatiq.set_broker(broker)
send_email = dramatiq.actor(run_send_email, actor_name="send_email", max_retries=0, broker=broker)
