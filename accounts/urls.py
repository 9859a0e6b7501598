from __future__ import annotations

from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("twitch/connect/", views.connect, name="twitch_connect"),
    path("twitch/callback/", views.callback, name="twitch_callback"),
    path("twitch/disconnect/", views.disconnect, name="twitch_disconnect"),
    path("twitch/eventsub/", views.eventsub, name="twitch_eventsub"),
    path("healthz", views.healthz, name="healthz"),
]
