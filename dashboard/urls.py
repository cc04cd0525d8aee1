from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("hosts/add/", views.hosts_add, name="hosts-add"),
]
