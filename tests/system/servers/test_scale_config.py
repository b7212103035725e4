"""Past one machine, without starting anything: where the nightly refresh runs its prompts (fan-out only onto a
deployment on a work pool), the prompts file's `fan_out:` block, and the PostgreSQL URLs of `pmpo serve --db`."""

from __future__ import annotations

import pytest
import yaml

from pmpo.errors import PmpoError


@pytest.mark.usefixtures("prefect_harness")
def test_fan_out_only_onto_a_deployment_on_a_work_pool():
    from flows.fanout import deployment_for
    from flows.optimize import optimize_prompt

    name = "optimize-prompt/fanout-probe"
    assert deployment_for("auto", name) is None  # no such deployment: the prompts run in this process
    with pytest.raises(PmpoError, match="no deployment 'optimize-prompt/fanout-probe' on a work pool"):
        deployment_for("work_pool", name)
    # Served (`flow.serve`, as `pmpo serve` does): no pool, and the waiting refresh would hold the runner's slot.
    optimize_prompt.to_deployment("fanout-probe").apply()
    assert deployment_for("auto", name) is None
    with pytest.raises(PmpoError, match="on a work pool"):
        deployment_for("work_pool", name)
    assert deployment_for("in_process", name) is None


def test_prompts_file_sets_the_fan_out(tmp_path):
    from flows.managed import NightlyConfig, plan

    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump({"fan_out": {"mode": "work_pool", "timeout_s": 3600}, "prompts": [{"name": "a"}]}))
    fan_out = plan(NightlyConfig(prompts_file=str(path))).fan_out
    assert (fan_out.mode, fan_out.deployment, fan_out.timeout_s) == ("work_pool", "optimize-prompt/optimize", 3600)
    path.write_text(yaml.safe_dump({"fan_out": {"mode": "cluster"}, "prompts": [{"name": "a"}]}))
    with pytest.raises(PmpoError, match="fan_out.mode"):
        plan(NightlyConfig(prompts_file=str(path)))


def test_db_url_gives_each_server_its_own_database():
    from deployments.postgres import DatabaseError, redacted, stores

    s = stores("postgresql://team:s3cret@db.internal:5433/prompts")
    assert s.mlflow == "postgresql+psycopg2://team:s3cret@db.internal:5433/prompts_mlflow"
    assert s.prefect == "postgresql+asyncpg://team:s3cret@db.internal:5433/prompts_prefect"
    assert stores("postgresql://team@db.internal/postgres").databases == ("pmpo_mlflow", "pmpo_prefect")
    assert (
        redacted("postgresql://team:s3cret@db.internal:5433/prompts")
        == "postgresql://team:***@db.internal:5433/prompts"
    )
    with pytest.raises(DatabaseError, match=r"--db mysql://team:\*\*\*@h/x: expected postgresql://"):
        stores("mysql://team:s3cret@h/x")
