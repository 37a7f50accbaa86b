"""Render the Helm chart for each environment into ``deploy/k8s/rendered/``.

``make manifests`` writes them; ``tests/deploy/test_helm.py`` renders again and checks
the committed files are exactly that, so a reviewer reads what will be applied.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "deploy" / "helm" / "payment-monitor"
RENDERED = REPO_ROOT / "deploy" / "k8s" / "rendered"
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
ENVIRONMENTS = ("dev", "prod")
RELEASE, NAMESPACE = "payment-monitor", "payments"
# The Kubernetes version the manifests are rendered and validated for (an AKS version).
KUBE_VERSION = "1.35.0"


def values_file(env: str) -> Path:
    return CHART.parent / f"values-{env}.yaml"


def render(env: str) -> str:
    """``helm template`` of the chart with ``values-<env>.yaml``, with a header."""
    if not HELM.exists():
        raise SystemExit(f"{HELM} is missing: run `make install` (it builds Helm with Go)")
    out = subprocess.run(
        [str(HELM), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--kube-version", KUBE_VERSION, "-f", str(values_file(env))],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"helm template failed for {env}:\n{out.stderr}")
    header = (f"# Rendered by `make manifests` from deploy/helm/payment-monitor with "
              f"deploy/helm/values-{env}.yaml\n# (release {RELEASE}, namespace {NAMESPACE}, "
              f"Kubernetes {KUBE_VERSION}). Do not edit: change the chart or the values.\n")
    return header + out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    RENDERED.mkdir(parents=True, exist_ok=True)
    for env in ENVIRONMENTS:
        path = RENDERED / f"{env}.yaml"
        path.write_text(render(env))
        print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
