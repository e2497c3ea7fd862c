"""Blueprints of the serving API, one per concern."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from . import churn, demand, health, models

    app.register_blueprint(health.bp)
    app.register_blueprint(churn.bp)
    app.register_blueprint(demand.bp)
    app.register_blueprint(models.bp)
