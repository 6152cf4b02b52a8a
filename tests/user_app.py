"""What a user of the template writes: their own routes and tasks, with no telemetry code."""

import time

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks

from app.main import create_app
from app.retry_policy import RetryPolicy, with_policy
from app.settings import Settings
from app.tasks import LogFile, write_log


class PaymentDeclinedError(Exception):
    pass


class WarehouseOfflineError(Exception):
    pass


def charge_card(email: str, amount_cents: int) -> None:
    raise PaymentDeclinedError("card declined")


async def reserve_stock(order_id: str) -> None:
    raise WarehouseOfflineError("warehouse offline")


def import_rows(count: int) -> None:
    if count < 0:
        raise ValueError("a negative row count")
    if count > 1_000_000:
        raise OverflowError("too many rows")


def export_rows(count: int) -> None:
    if count < 0:
        raise ValueError("a negative row count")


def build_report(seconds: float) -> None:
    time.sleep(seconds)


class InventoryBusyError(Exception):
    pass


_SYNCED: set[str] = set()


def sync_inventory(sku: str) -> None:
    """Fails its first attempt for each sku, then succeeds: one retry per task, by its policy."""
    if sku not in _SYNCED:
        _SYNCED.add(sku)
        raise InventoryBusyError("inventory busy")


with_policy(sync_inventory, RetryPolicy(max_attempts=3, first_backoff_seconds=0.05, retry_on=(InventoryBusyError,)))


def create() -> FastAPI:
    settings = Settings()
    app = create_app(settings)
    log = LogFile(settings.log_file)

    @app.post("/orders/")
    async def place_order(email: str, order_id: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(charge_card, email, 1999)
        background_tasks.add_task(write_log, log, f"receipt for {order_id}")
        return {"status": "accepted"}

    @app.post("/reservations/")
    async def reserve(order_id: str) -> JSONResponse:
        background = StarletteBackgroundTasks(
            [BackgroundTask(reserve_stock, order_id), BackgroundTask(write_log, log, f"reservation {order_id}")]
        )
        return JSONResponse({"status": "reserving"}, background=background)

    @app.post("/audit/")
    def audit(note: str) -> JSONResponse:
        return JSONResponse({"status": "audited"}, background=BackgroundTask(write_log, log, f"audit {note}"))

    @app.post("/checkout/")
    async def checkout(email: str) -> dict[str, str]:
        raise PaymentDeclinedError("card declined at checkout")

    @app.post("/reports/")
    async def report(seconds: float, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(build_report, seconds)
        return {"status": "building"}

    @app.post("/imports/")
    async def start_import(count: int, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(import_rows, count)
        return {"status": "importing"}

    @app.post("/exports/")
    async def start_export(count: int, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(export_rows, count)
        return {"status": "exporting"}

    @app.post("/inventory/sync/")
    async def sync(sku: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_inventory, sku)
        return {"status": "syncing"}

    @app.get("/inventory/")
    def inventory() -> dict[str, int]:  # sync: served from AnyIO's default thread pool
        return {"items": 3}

    return app
