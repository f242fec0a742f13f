"""Independent checks of the service's OpenAPI document, for tests/api/openapi.rs.

usage: openapi_check.py spec DOC.json
         validates the document as OpenAPI (openapi-spec-validator, the 3.1 schema)
       openapi_check.py instances CASES.json
         CASES.json is {"doc": <the document>, "cases": [{"what", "schema", "instance"}]}; each
         instance is validated against its schema (JSON Schema 2020-12, as OpenAPI 3.1 uses it;
         `#/components/...` references resolve in the document) with `jsonschema`

Exits 1 naming every failure.
"""

import json
import sys

import jsonschema
from openapi_spec_validator import validate


def check_spec(path):
    with open(path) as f:
        doc = json.load(f)
    assert doc["openapi"].startswith("3."), doc["openapi"]
    validate(doc)
    print(f"valid OpenAPI {doc['openapi']}: {len(doc['paths'])} paths")


def check_instances(path):
    with open(path) as f:
        data = json.load(f)
    doc = data["doc"]
    failures = []
    for case in data["cases"]:
        # the schema inside the document, so that `#/components/...` resolves
        schema = dict(case["schema"])
        schema["components"] = doc["components"]
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(case["instance"]), key=lambda e: list(e.path))
        for e in errors[:5]:
            where = "/".join(str(p) for p in e.absolute_path)
            failures.append(f"{case['what']}: at /{where}: {e.message}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"{len(data['cases'])} instances valid")


if __name__ == "__main__":
    command, path = sys.argv[1:3]
    {"spec": check_spec, "instances": check_instances}[command](path)
