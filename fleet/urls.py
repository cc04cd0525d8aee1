"""URL map of the panel."""

from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "GPU fleet control panel"
admin.site.site_title = "GPU fleet"
admin.site.index_title = "Fleet, pools and policies"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("dashboard.urls")),
]
