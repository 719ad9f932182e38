from __future__ import annotations

from django.db import models


class Order(models.Model):
    number = models.CharField(max_length=40, unique=True)

    class Meta:
        app_label = "shop"
