#!/usr/bin/env python3
"""Validate custom resources in rendered manifests against vendored schemas (tests/k8s-schemas/).

kubernetes-validate knows only built-in kinds and merely warns about a ServiceMonitor; this
checks each document whose apiVersion/kind has a schema, strictly (unknown fields are errors).

    scripts/validate-crd.py FILE...     # prints one line per checked object; exit 1 on any error

Needs the `jsonschema` module (the tools venv has it: kubernetes-validate depends on it).
Gateway API objects (gateway.networking.k8s.io) are checked by tests/k8s-schemas/gateway-validate.mjs
with the standard-channel CRD schemas of the npm package @kubernetes-models/gateway-api
(scripts/install-tools.sh gateway-models); they are errors if that package is missing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent.parent / "tests/k8s-schemas"
KNOWN = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}


ROOT = Path(__file__).resolve().parent.parent
GATEWAY_MODELS = Path(os.environ.get("WSINGRESS_TOOLS", ROOT / ".tools")) / "gateway-models"


def gateway_check(objects):
    """(checked, failed) for Gateway API objects, printing one line each."""
    if not objects:
        return 0, 0
    package = GATEWAY_MODELS / "node_modules/@kubernetes-models/gateway-api"
    if not package.is_dir():
        print(f"FAIL  {len(objects)} Gateway API objects: {package} missing (scripts/install-tools.sh gateway-models)")
        return len(objects), len(objects)
    run = subprocess.run(
        ["node", str(SCHEMAS / "gateway-validate.mjs"), str(GATEWAY_MODELS)],
        input=json.dumps(objects, default=str),
        capture_output=True,
        text=True,
    )
    print(run.stdout, end="")
    if run.stderr:
        print(run.stderr, end="", file=sys.stderr)
    failed = sum(1 for line in run.stdout.splitlines() if line.startswith("FAIL"))
    return len(objects), failed or (1 if run.returncode else 0)


def main(files):
    checked = failed = 0
    gateway = []
    for name in files:
        for doc in yaml.safe_load_all(Path(name).read_text()):
            if not isinstance(doc, dict):
                continue
            if str(doc.get("apiVersion", "")).startswith("gateway.networking.k8s.io/"):
                gateway.append([f"{name}: {doc.get('kind')} {doc.get('metadata', {}).get('name', '?')}", doc])
                continue
            schema_file = KNOWN.get((doc.get("apiVersion"), doc.get("kind")))
            if not schema_file:
                continue
            schema = json.loads((SCHEMAS / schema_file).read_text())
            what = f"{name}: {doc['kind']} {doc.get('metadata', {}).get('name', '?')}"
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
            checked += 1
            if errors:
                failed += 1
                for e in errors:
                    print(f"FAIL  {what}: {'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
            else:
                print(f"ok    {what} against {schema_file}")
    more_checked, more_failed = gateway_check(gateway)
    checked += more_checked
    failed += more_failed
    if not checked:
        print("validate-crd: no custom resources with a vendored schema in " + " ".join(files))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
