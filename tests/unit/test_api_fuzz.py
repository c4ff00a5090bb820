"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis): whatever a
client sends that the schema allows — and much that it does not — the controller never answers
with a server error."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.unit.test_api import ADMIN, config, controller

# schemathesis reads the schema when the module is collected, before fixtures run: the
# controller behind it keeps its state in a directory of its own.
_STATE = tempfile.mkdtemp(prefix="cityctl-api-fuzz-")
atexit.register(shutil.rmtree, _STATE, True)
_cfg = config()
_cfg = _cfg.model_copy(
    update={"controller": _cfg.controller.model_copy(update={"state_dir": Path(_STATE)})}
)
_ctl = controller(_cfg)
assert _ctl.api is not None
schema = schemathesis.openapi.from_asgi("/openapi.json", _ctl.api.app)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error(case: schemathesis.Case) -> None:
    # As the most privileged user, so the writes are exercised past the role checks.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {ADMIN}"}, checks=[not_a_server_error]
    )
