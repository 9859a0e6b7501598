from __future__ import annotations

from django.urls import path

from accounts.eventsub import views as eventsub
from accounts.oauth import views as oauth
from accounts.web import views as web

urlpatterns = [
    path("", web.home, name="home"),
    path("twitch/connect/", oauth.connect, name="twitch_connect"),
    path("twitch/callback/", oauth.callback, name="twitch_callback"),
    path("twitch/signin/", oauth.signin, name="twitch_signin"),
    path("twitch/disconnect/", oauth.disconnect, name="twitch_disconnect"),
    path("twitch/eventsub/", eventsub.eventsub, name="twitch_eventsub"),
    path("healthz", web.healthz, name="healthz"),
]
