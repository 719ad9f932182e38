from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from .shop.views import create_order

urlpatterns = [
    path("admin/", admin.site.urls),
    path("jobs/", include("outlast.contrib.django.urls")),
    path("orders/<str:number>/", create_order),
]
