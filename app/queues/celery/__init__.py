"""The Celery adapter, the only code that imports celery or kombu: what the seam asks of it
(adapter.py: producer, worker command, queue depth), its app and durability settings (app.py),
the web side's producer (producer.py), the task class, bootsteps and signal handlers of the worker
(consumer.py), its spans (tracing.py) and the app `celery -A` loads (worker.py)."""
