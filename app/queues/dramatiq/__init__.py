"""The Dramatiq adapter, the only code that imports dramatiq or pika: what the seam asks of it
(adapter.py), its broker and durability settings (broker.py), the web side's producer
(producer.py), the actor's function and the worker's middleware (consumer.py) and the broker
`dramatiq` loads (worker.py)."""
