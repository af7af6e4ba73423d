#!/usr/bin/env python3
"""Checks schemas/recipe.schema.json with a third-party validator.

Every shipped recipe (recipes/**/*.yaml) is rendered in its merged form
(`recipe render FILE --format json`: `extends` resolved, defaults filled in) and
validated against the committed schema with the Python `jsonschema` package's
Draft 7 validator, which shares no code with the Rust loader. A few broken copies
must be rejected at the expected place, so a schema that accepts everything fails.
When PyYAML is installed, each recipe file is also validated as an editor reads it
(unmerged): files that `extends` a base must not be asked for the base's keys.

Not part of `cargo test` (the suite needs no Python). Run it by hand:

    python3 -m venv /tmp/schema-venv
    /tmp/schema-venv/bin/pip install jsonschema pyyaml
    /tmp/schema-venv/bin/python tests/schema_third_party.py

The binary is `cargo run -q --` unless RECIPE_BIN names a built one. Exits 1 on
any failure.
"""

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent


def recipe_cmd():
    if os.environ.get("RECIPE_BIN"):
        return [os.environ["RECIPE_BIN"]]
    return ["cargo", "run", "-q", "--"]


def render(path):
    cmd = recipe_cmd() + ["render", str(path), "--format", "json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def errors(validator, doc):
    return sorted(
        ("/" + "/".join(str(p) for p in e.absolute_path), e.validator)
        for e in validator.iter_errors(doc)
    )


def main():
    schema = json.loads((ROOT / "schemas/recipe.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    failures = 0
    merged = {}
    for path in recipes:
        rel = path.relative_to(ROOT)
        doc = render(rel)
        merged[rel] = doc
        errs = errors(validator, doc)
        status = "ok" if not errs else f"FAIL {errs}"
        failures += bool(errs)
        print(f"merged  {rel}: {status}")

    # Broken copies of a valid recipe: the validator must reject each at its value.
    base = merged[Path("recipes/simclr.yaml")]
    broken = [
        (("loss", "temperature"), 0, ("/loss/temperature", "exclusiveMinimum")),
        (("optimizer", "lr"), -0.3, ("/optimizer/lr", "exclusiveMinimum")),
        (("train", "batch_size"), 1, ("/train/batch_size", "minimum")),
        (("optimizer", "momentum"), 1.0, ("/optimizer/momentum", "exclusiveMaximum")),
        (("loss", "method"), "simclrr", ("/loss/method", "enum")),
        (("train", "epochs"), "two", ("/train/epochs", "type")),
    ]
    for keys, value, expected in broken:
        doc = copy.deepcopy(base)
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        errs = errors(validator, doc)
        ok = errs == [expected]
        failures += not ok
        print(f"broken  {'.'.join(keys)}={value!r}: {'rejected' if ok else f'FAIL {errs}'}")
    doc = copy.deepcopy(base)
    del doc["train"]
    errs = errors(validator, doc)
    ok = errs == [("/", "required")]
    failures += not ok
    print(f"broken  no train: {'rejected' if ok else f'FAIL {errs}'}")

    try:
        import yaml
    except ImportError:
        print("unmerged: skipped (PyYAML not installed)")
    else:
        for path in recipes:
            rel = path.relative_to(ROOT)
            doc = yaml.safe_load(path.read_text())
            errs = errors(validator, doc)
            status = "ok" if not errs else f"FAIL {errs}"
            failures += bool(errs)
            print(f"as-is   {rel}{' (extends)' if 'extends' in doc else ''}: {status}")

    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
