"""The Dramatiq adapter, the only code that imports dramatiq or pika, in the files every queue
package has (docs/architecture.md): names.py, client.py (its broker), producer.py, consumer.py,
worker.py (the broker `dramatiq` loads) and adapter.py."""
