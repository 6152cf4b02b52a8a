"""The RQ adapter, the only code that imports rq, in the files every queue package has
(docs/architecture.md): names.py, client.py (its queue), producer.py, consumer.py (the observed run
and the worker class), worker.py (what `rq worker-pool` loads) and adapter.py."""
