"""The RQ adapter, the only code that imports rq: what the seam asks of it (adapter.py), the web
side's producer (producer.py), the job functions RQ imports (jobs.py), the worker class with its
durability settings (worker.py) and RQ's settings module (config.py)."""
