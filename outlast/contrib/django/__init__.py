"""outlast in a Django project.

Add ``"outlast.contrib.django"`` to INSTALLED_APPS (it imports each app's ``tasks.py``),
configure ``settings.OUTLAST`` (see ``conf``), and trigger from views::

    from outlast.contrib.django import trigger

    def create_order(request):
        with transaction.atomic():
            order = Order.objects.create(...)
            trigger(ship_order, {"order_id": order.id})   # starts when the commit did

``python manage.py outlast_migrate`` creates outlast's tables, ``outlast_worker`` runs a
worker; ``path("jobs/", include("outlast.contrib.django.urls"))`` serves the dashboard
to staff.
"""

from __future__ import annotations

from ._trigger import PendingRun, client, trigger

__all__ = ["PendingRun", "client", "trigger"]
