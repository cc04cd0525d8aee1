"""Install the method's use-case profiles, reference GPU prices and fleet-wide policies."""

from django.db import migrations

from fleet.presets import policy_presets, presets_install, price_presets, profile_presets


def install(apps, schema_editor):
    presets_install(
        ModelProfile=apps.get_model("fleet", "ModelProfile"),
        PriceRate=apps.get_model("fleet", "PriceRate"),
        Policy=apps.get_model("fleet", "Policy"),
    )


def uninstall(apps, schema_editor):
    apps.get_model("fleet", "ModelProfile").objects.filter(name__in=[p["name"] for p in profile_presets()]).delete()
    PriceRate = apps.get_model("fleet", "PriceRate")
    for rate in price_presets():
        PriceRate.objects.filter(
            gpu_model=rate["gpu_model"], node=None, effective_from=rate["effective_from"], source=rate["source"]
        ).delete()
    apps.get_model("fleet", "Policy").objects.filter(pool=None, kind__in=[p["kind"] for p in policy_presets()]).delete()


class Migration(migrations.Migration):
    dependencies = [("fleet", "0001_initial")]

    operations = [migrations.RunPython(install, uninstall)]
