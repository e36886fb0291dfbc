"""deploy/prefect.yaml is read and checked with Prefect's own deploy code."""

from pathlib import Path

import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parent.parent


def test_nightly_deployment_loads_with_cron_and_valid_parameters(monkeypatch):
    monkeypatch.chdir(ROOT)  # `prefect deploy` runs from the repository root
    model = PrefectYamlModel.model_validate(yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text()))
    deployments = {d.name: d.model_dump(exclude_unset=True, mode="json") for d in model.deployments}
    nightly = deployments["nightly"]

    schedule = _schedule_config_to_deployment_schedule(nightly["schedules"][0])["schedule"]
    assert isinstance(schedule, CronSchedule)
    assert schedule.cron == "0 2 * * *" and schedule.timezone == "UTC"

    flow = load_flow_from_entrypoint(nightly["entrypoint"])
    assert flow.name == "nightly"
    validated = flow.validate_parameters(nightly["parameters"])
    assert validated["config"] == "local" and validated["source"]


def test_every_profile_loads():
    from fusion_core.config import load_settings

    paths = sorted((ROOT / "fusion_core" / "profiles").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"smoke", "local", "cluster"}
    for path in paths:
        assert load_settings(str(path)).profile == path.stem
