"""Route labels: templates, never raw paths, whatever way the route was added."""

from fastapi import APIRouter, FastAPI

from app.observability.middleware import UNMATCHED, RouteTemplates


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": []}


def test_templates_of_direct_included_and_later_routes() -> None:
    app = FastAPI()
    templates = RouteTemplates()

    @app.post("/log/")
    def log() -> None: ...

    items = APIRouter(prefix="/v1")

    @items.get("/items/{item_id}")
    def item(item_id: int) -> None: ...

    app.include_router(items)
    assert templates(app.routes, _scope("POST", "/log/")) == "/log/"
    assert templates(app.routes, _scope("GET", "/v1/items/42")) == "/v1/items/{item_id}"
    assert templates(app.routes, _scope("GET", "/log/")) == "/log/"  # a 405 on that route
    assert templates(app.routes, _scope("GET", "/items/42")) == UNMATCHED

    @app.get("/added-later/{name}")
    def later(name: str) -> None: ...

    @app.get("/log/")
    def log_get() -> None: ...

    assert templates(app.routes, _scope("GET", "/added-later/x")) == "/added-later/{name}"
    assert templates(app.routes, _scope("GET", "/log/")) == "/log/"
    assert templates(app.routes, _scope("GET", "/v1/items/7")) == "/v1/items/{item_id}"
