from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("pools/<int:pool_id>/", views.pool, name="pool"),
    path("nodes/<int:node_id>/", views.node, name="node"),
    path("costs/", views.costs, name="costs"),
    path("decisions/", views.decisions, name="decisions"),
    path("requests/", views.requests_page, name="requests"),
    path("hosts/add/", views.hosts_add, name="hosts-add"),
    path("vendor/plotly-<str:version>.min.js", views.plotly_js, name="plotly-js"),
]
