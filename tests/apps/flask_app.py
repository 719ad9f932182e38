"""A Flask app using outlast.contrib.flask (tests/test_contrib_flask.py runs its CLI)."""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from outlast import step, task
from outlast.contrib.flask import Outlast


@task(id="flask-greet")
async def greet(payload: dict[str, str]) -> str:
    return str(await step.run("greet", lambda: f"hello {payload['name']}"))


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    Outlast(app)

    @app.post("/greet")
    def create() -> dict[str, str]:
        handle = app.outlast.trigger(greet, request.get_json())  # type: ignore[attr-defined]
        return {"run_id": handle.id}

    return app
