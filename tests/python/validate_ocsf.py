"""Validates OCSF events (one JSON object a line, on stdin) against the real
OCSF 1.5.0 schema, as shipped by `pydantic-ocsf` (PyPI): its bundled schema
export and the Pydantic models it builds from it.

Two checks, so that neither auditrail's opinion nor one library's reading
of the schema is the only judge:
  1. the library's model of the event's class validates the event: required
     attributes, types, enum ids, id/caption siblings that agree,
     category_uid / class_uid / type_uid that fit the class;
  2. this script walks the same schema export: every attribute name is one
     the class (or the object it sits in) or the OCSF dictionary defines,
     required attributes are there at every depth, `at_least_one` and
     `just_one` constraints hold, and `metadata.version` is 1.5.0.

Prints one JSON object ({"valid": N, "errors": [...]}) and exits 1 when any
event is invalid, 2 when the input holds no event at all.

Usage: python validate_ocsf.py < events.ndjson
"""

import json
import sys
from pathlib import Path

import ocsf
from ocsf.v1_5_0 import events as ocsf_events
from pydantic import ValidationError

VERSION = "1.5.0"
SCHEMA = json.loads(
    (Path(ocsf.__file__).parent / "schemas" / "v1_5_0.json").read_text(encoding="utf-8")
)
DICTIONARY = SCHEMA["dictionary"]["attributes"]
CATEGORIES = {
    name: meta["uid"] for name, meta in SCHEMA["categories_meta"]["attributes"].items()
}


def resolve(table, name):
    """The attributes and constraints of a class or object, through `extends`
    (a child's definition of an attribute overrides its parent's)."""
    spec = table[name]
    attributes, constraints = {}, {}
    parent = spec.get("extends")
    if parent and parent in table:
        attributes, constraints = resolve(table, parent)
        attributes = {k: dict(v) for k, v in attributes.items()}
    for key, value in spec.get("attributes", {}).items():
        if key.startswith("$") or not isinstance(value, dict):
            continue
        attributes[key] = {**DICTIONARY.get(key, {}), **attributes.get(key, {}), **value}
    if spec.get("constraints"):
        constraints = spec["constraints"]
    return attributes, constraints


def category_of(name):
    spec = SCHEMA["events"][name]
    if spec.get("category"):
        return CATEGORIES.get(spec["category"])
    parent = spec.get("extends")
    return category_of(parent) if parent in SCHEMA["events"] else None


# class_uid -> (schema name, model), for every concrete class of the schema.
CLASSES = {}
for _name, _spec in SCHEMA["events"].items():
    _category = category_of(_name)
    if _spec.get("uid") is not None and _category is not None:
        _model = "".join(part.capitalize() for part in _name.split("_"))
        CLASSES[_category * 1000 + _spec["uid"]] = (_name, _model)


def model_for(schema_name):
    """The library's model of a class (its names are PascalCase, with
    `API` for `api`)."""
    candidates = ["".join(p.capitalize() for p in schema_name.split("_"))]
    candidates.append(candidates[0].replace("Api", "API", 1))
    for candidate in candidates:
        model = getattr(ocsf_events, candidate, None)
        if model is not None:
            return model
    raise LookupError(f"pydantic-ocsf has no model of {schema_name}")


def walk(value, attributes, constraints, path, problems):
    """Checks one object against its resolved schema attributes."""
    for key, spec in attributes.items():
        if spec.get("requirement") == "required" and key not in value:
            problems.append(f"{path or '<event>'}: required attribute {key!r} is missing")
    for rule, keys in constraints.items():
        present = [k for k in keys if k in value]
        if rule == "at_least_one" and not present:
            problems.append(f"{path or '<event>'}: needs at least one of {keys}")
        if rule == "just_one" and len(present) != 1:
            problems.append(f"{path or '<event>'}: needs exactly one of {keys}, has {present}")
    for key, item in value.items():
        spec = attributes.get(key) or DICTIONARY.get(key)
        where = f"{path}.{key}" if path else key
        if spec is None:
            problems.append(f"{where}: no such attribute in OCSF {VERSION}")
            continue
        kind = spec.get("type")
        if kind == "object_t" or key == "unmapped":
            continue  # free-form by definition
        if kind in SCHEMA["objects"]:
            items = item if spec.get("is_array") else [item]
            if spec.get("is_array") and not isinstance(item, list):
                problems.append(f"{where}: must be an array")
                continue
            for i, element in enumerate(items):
                if not isinstance(element, dict):
                    problems.append(f"{where}: must be a {kind} object")
                    continue
                sub_attributes, sub_constraints = resolve(SCHEMA["objects"], kind)
                at = f"{where}[{i}]" if spec.get("is_array") else where
                walk(element, sub_attributes, sub_constraints, at, problems)


def check(event):
    problems = []
    class_uid = event.get("class_uid")
    if class_uid not in CLASSES:
        return [f"class_uid {class_uid!r} is no class of OCSF {VERSION}"]
    schema_name, _ = CLASSES[class_uid]
    try:
        model_for(schema_name).model_validate(event)
    except ValidationError as error:
        for e in error.errors():
            problems.append(f"pydantic-ocsf: {'.'.join(map(str, e['loc']))}: {e['msg']}")
    attributes, constraints = resolve(SCHEMA["events"], schema_name)
    # The base class makes activity_id and type_uid required; a class that
    # lists its own activities may drop the requirement flag on the way.
    for key in ("activity_id", "category_uid", "class_uid", "type_uid", "severity_id", "time"):
        if key not in event:
            problems.append(f"<event>: base attribute {key!r} is missing")
    walk(event, attributes, constraints, "", problems)
    if event.get("metadata", {}).get("version") != VERSION:
        problems.append(f"metadata.version is not {VERSION}")
    return problems


def main():
    valid, errors, seen = 0, [], 0
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        seen += 1
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append({"line": number, "problems": [f"not JSON: {error}"]})
            continue
        problems = check(event)
        if problems:
            errors.append({"line": number, "class_uid": event.get("class_uid"), "problems": problems})
        else:
            valid += 1
    print(json.dumps({"valid": valid, "errors": errors}))
    if seen == 0:
        sys.exit(2)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
