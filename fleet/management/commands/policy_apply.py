"""Apply a settings file (as ``simulate --tune``/``bench/tune.py`` or ``bench/sim/*.json`` write it) to a pool.

Example::

    python manage.py policy_apply var/tuned.json --pool chat-l
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.decide.services import SettingsRefused, pool_settings_apply
from fleet.management.commands.simulate import settings_file_read
from fleet.models import Pool


class Command(BaseCommand):
    help = (
        "Write a settings file's pool fields and policy settings to one pool through the services: validated as "
        "the admin validates, logged as a decision; invalid input changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help='JSON: {"pool": {...}, "policies": {kind: {...} | null}}.')
        parser.add_argument("--pool", required=True, help="The pool's name.")
        parser.add_argument("--user", default="policy_apply", help="Who applies it, for the decision log.")

    def handle(self, *args: Any, file: str, pool: str, user: str, **options: Any) -> None:
        values = settings_file_read(file)
        try:
            target = Pool.objects.get(name=pool)
        except Pool.DoesNotExist as exc:
            raise CommandError(f"--pool {pool}: no such pool") from exc
        try:
            decision = pool_settings_apply(
                pool=target, values=values, user=user, reason=f"settings from {file} applied by {user}"
            )
        except SettingsRefused as exc:
            raise CommandError(f"{file}: refused, nothing changed: {exc}") from exc
        self.stdout.write(f"applied {file} to pool {target.name} (decision {decision.pk})")
        self.stdout.write(json.dumps(decision.inputs["after"], indent=2, default=str))
