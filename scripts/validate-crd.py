#!/usr/bin/env python3
"""Validate custom resources in rendered manifests against vendored schemas (tests/k8s-schemas/).

kubernetes-validate knows only built-in kinds and merely warns about a ServiceMonitor; this
checks each document whose apiVersion/kind has a schema, strictly (unknown fields are errors).

    scripts/validate-crd.py FILE...     # prints one line per checked object; exit 1 on any error

Needs the `jsonschema` module (the tools venv has it: kubernetes-validate depends on it).
"""

import json
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent.parent / "tests/k8s-schemas"
KNOWN = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}


def main(files):
    checked = failed = 0
    for name in files:
        for doc in yaml.safe_load_all(Path(name).read_text()):
            if not isinstance(doc, dict):
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
    if not checked:
        print("validate-crd: no custom resources with a vendored schema in " + " ".join(files))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
