"""URL map of the panel."""

from django.contrib import admin
from django.urls import include, path

from fleet import metrics
from fleet.telemetry import agent_api, agent_dist

admin.site.site_header = "GPU fleet control panel"
admin.site.site_title = "GPU fleet"
admin.site.index_title = "Fleet, pools and policies"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/agent/v1/register", agent_api.register, name="agent-register"),
    path("api/agent/v1/report", agent_api.report, name="agent-report"),
    path("api/agent/v1/wait", agent_api.wait, name="agent-wait"),
    path("agent/install.sh", agent_dist.install_script, name="agent-install"),
    path("agent/gpufleet-agent.tar.gz", agent_dist.agent_tarball, name="agent-tarball"),
    path("agent/wheels/", agent_dist.wheel_index, name="agent-wheels"),
    path("agent/wheels/<str:name>", agent_dist.wheel_file, name="agent-wheel"),
    path("metrics", metrics.metrics, name="metrics"),
    path("", include("dashboard.urls")),
]
