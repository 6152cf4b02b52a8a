"""The Celery adapter, the only code that imports celery or kombu: its app and durability
settings (app.py), the web side's producer (producer.py), the task class, bootsteps and signal
handlers of the worker (consumer.py), the broker's depth (depth.py), its spans (tracing.py), the
app `celery -A` loads (worker.py) and the command that starts it (worker_command.py)."""
