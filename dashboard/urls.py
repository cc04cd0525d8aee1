from django.urls import path

from dashboard import request_views, views

app_name = "dashboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("pools/<int:pool_id>/", views.pool, name="pool"),
    path("nodes/<int:node_id>/", views.node, name="node"),
    path("costs/", views.costs, name="costs"),
    path("decisions/", views.decisions, name="decisions"),
    path("decisions/<int:decision_id>/", views.decision, name="decision"),
    path("savings/", views.savings, name="savings"),
    path("requests/", request_views.requests_page, name="requests"),
    path("requests/<int:request_id>/", request_views.request_detail, name="request"),
    path("requests/export.csv", request_views.requests_csv, name="requests-csv"),
    path("costs/spend.csv", request_views.spend_csv, name="spend-csv"),
    path("alerts/", request_views.alerts, name="alerts"),
    path("instances/", views.instances, name="instances"),
    path("instances/<int:instance_id>/action/", views.instance_action, name="instance-action"),
    path("pools/<int:pool_id>/scale/", views.pool_scale, name="pool-scale"),
    path("hosts/add/", views.hosts_add, name="hosts-add"),
    path("recommendations/", views.recommendations, name="recommendations"),
    path("recommendations/apply/", views.recommendation_apply, name="recommendation-apply"),
    path("vendor/plotly-<str:version>.min.js", views.plotly_js, name="plotly-js"),
]
