"""Where heavy tasks run: in the web worker after the response (inprocess.py), or on a broker
through the TASK_QUEUE library (broker.py on the web side; the library's own worker, started by
app/worker_main.py). Each library is one package here behind one seam (adapters.py), registered
with one line (registry.py). Nothing is imported here: a worker imports what it runs."""
