"""The Celery adapter, the only code that imports celery or kombu, in the files every queue package
has (docs/architecture.md): names.py, client.py (its app and instrumentation), producer.py,
consumer.py (the observed run and the worker's hooks), worker.py (the app `celery -A` loads) and
adapter.py."""
