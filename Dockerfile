# The service image: gunicorn with uvicorn workers, as `make run` starts it, as a non-root user.
# BASE_IMAGE lets a local stand-in for python:3.x-slim be used where no registry is reachable.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS dependencies
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# The pinned dependencies alone, so a code change does not reinstall them.
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-deps -r /tmp/requirements.txt

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FILE=/data/background-tasks.log \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc \
    OTEL_SEMCONV_STABILITY_OPT_IN=http
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data
COPY --from=dependencies /opt/venv /opt/venv
WORKDIR /srv
COPY app/ app/
COPY deploy/gunicorn.conf.py deploy/gunicorn.conf.py
USER 10001:10001
# 8000: the web service; 9808: /metrics of the queue worker (the same image, command
# `python -m app.worker_main`: TASK_QUEUE's own worker, with SIGTERM as a graceful stop).
EXPOSE 8000 9808
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['PORT'], timeout=2)"]
# gunicorn drains on SIGTERM: workers finish their tasks within DRAIN_SECONDS.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
