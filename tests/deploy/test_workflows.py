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


def test_every_action_is_pinned_by_commit_to_a_release():
    """A tag can be moved; a commit cannot. The comment names the release it was, for the
    reader and for Dependabot."""
    uses = re.findall(r"^\s*-?\s*uses: (\S+)(.*)$",
                      "".join(p.read_text() for p in WORKFLOWS.glob("*.yml")), re.M)
    outside = [(u, rest) for u, rest in uses if not u.startswith("./")]
    assert len(outside) >= 9
    for action, rest in outside:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+(\.\d+)*", rest), f"{action}: no release comment"


def test_deploy_runs_only_for_a_commit_ci_passed():
    text = (WORKFLOWS / "deploy.yml").read_text()
    on = yaml.safe_load(text)[True]  # YAML 1.1 reads the key `on` as true
    assert set(on) == {"workflow_run", "workflow_dispatch"}  # never on a bare push
    assert on["workflow_run"] == {"workflows": ["ci"], "types": ["completed"],
                                  "branches": ["main"]}
    assert workflow("ci.yml")["name"] == "ci"
    image = workflow("deploy.yml")["jobs"]["image"]
    assert "github.event.workflow_run.conclusion == 'success'" in image["if"]
    assert image["env"]["SHA"] == "${{ github.event.workflow_run.head_sha || github.sha }}"
    steps = {s.get("name"): s for s in image["steps"]}
    check = steps["ci.yml passed on this commit"]  # a manual run asks first
    assert check["if"] == "github.event_name == 'workflow_dispatch'"
    assert "--workflow ci.yml --commit \"$SHA\"" in check["run"]
    assert image["steps"][0]["with"]["ref"] == "${{ env.SHA }}"
    for name, job in workflow("deploy.yml")["jobs"].items():
        if name != "image":  # every release step checks out that same commit
            assert job["with"]["ref"] == "${{ needs.image.outputs.ref }}"


def test_dependabot_watches_every_pinned_ecosystem():
    config = yaml.safe_load((REPO_ROOT / ".github" / "dependabot.yml").read_text())
    watched = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert watched == {("pip", "/"), ("github-actions", "/"), ("docker", "/"),
                       ("terraform", "/deploy/azure/terraform")}
