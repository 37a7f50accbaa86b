"""GitHub Actions: actionlint-clean; CI runs what .ci/run runs; deploy builds once,
migrates with the image before it upgrades, dev before prod."""

from __future__ import annotations

import re
import subprocess

import yaml

from devtools.stack import REPO_ROOT
from tests.helpers import TOOLS, tool

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_actionlint_is_clean():
    out = subprocess.run([tool(TOOLS / "bin" / "actionlint"), "-color=false"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == [
        "ci.yml", "deploy.yml", "release.yml"]


def test_ci_runs_the_make_targets_of_ci_run():
    ci_run = (REPO_ROOT / ".ci" / "run").read_text()
    wanted = re.findall(r"^(make \w+)$", ci_run, re.M)
    assert wanted == ["make install", "make lint", "make test"]
    steps = [s.get("run") for s in workflow("ci.yml")["jobs"]["test"]["steps"] if s.get("run")]
    assert steps == wanted


def test_deploy_builds_once_then_migrates_before_upgrading_dev_before_prod():
    jobs = workflow("deploy.yml")["jobs"]
    assert "docker push" in " ".join(s.get("run", "") for s in jobs["image"]["steps"])
    order = {}
    for name, job in jobs.items():
        if name == "image":
            continue
        assert job["uses"] == "./.github/workflows/release.yml"
        order[name] = (job["with"]["environment"], job["with"]["step"], job["needs"])
        assert job["with"]["digest"] == "${{ needs.image.outputs.digest }}"
    assert order["dev-migrate"][:2] == ("dev", "migrate")
    assert "dev-migrate" in order["dev-upgrade"][2]
    assert "dev-upgrade" in order["prod-migrate"][2]
    assert "prod-migrate" in order["prod-upgrade"][2]
    # the approval gate: the release job runs in the environment (prod has reviewers)
    release = workflow("release.yml")["jobs"]["run"]
    assert release["environment"] == "${{ inputs.environment }}"
    runs = {s.get("name"): s.get("run", "") for s in release["steps"]}
    migrate = runs["migrate the database (faust -A app db upgrade)"]
    assert "templates/migrate-job.yaml" in migrate and "image.digest" in migrate
    assert "kubectl wait" in migrate
    assert "helm upgrade --install" in runs["upgrade the release"]
