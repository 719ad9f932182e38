from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from outlast.contrib.django import trigger

from .models import Order
from .tasks import ship


def create_order(request: HttpRequest, number: str) -> JsonResponse:
    with transaction.atomic():
        Order.objects.create(number=number)
        pending = trigger(ship, {"number": number})
        if request.GET.get("fail"):
            raise RuntimeError("the view failed after triggering")
    return JsonResponse({"run_id": pending.id, "committed": pending.committed})
