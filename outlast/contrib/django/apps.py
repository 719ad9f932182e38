"""The Django app: add ``"outlast.contrib.django"`` to INSTALLED_APPS."""

from __future__ import annotations

from django.apps import AppConfig


class OutlastConfig(AppConfig):
    name = "outlast.contrib.django"
    label = "outlast"
    verbose_name = "outlast"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from .conf import options

        opts = options()
        if opts["AUTODISCOVER"]:
            # Each installed app's tasks.py registers its @task functions, so workers,
            # triggers by id and the dashboard know them.
            autodiscover_modules(opts["TASKS_MODULE"])
