"""``path("jobs/", include("outlast.contrib.django.urls"))``: the dashboard for staff."""

from __future__ import annotations

from django.urls import re_path

from .views import dashboard

app_name = "outlast"
urlpatterns = [re_path(r"^(?P<path>.*)$", dashboard, name="dashboard")]
