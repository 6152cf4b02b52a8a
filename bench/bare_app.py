"""The baseline: the same tutorial endpoints on bare FastAPI, with no telemetry at all."""

from fastapi import FastAPI

from app.routes import tutorial_router
from app.settings import Settings


def create() -> FastAPI:
    app = FastAPI()
    app.include_router(tutorial_router(Settings()))
    return app
