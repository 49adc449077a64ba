"""Validate rendered Kubernetes objects the way an API server with strict field validation would.

- KServe kinds against KServe's own CRDs (``../shared/schemas/kserve/``), the operator kinds
  against theirs (``../shared/schemas/openshift/``): the CRD's ``openAPIV3Schema`` for the
  object's version, made strict (an object schema with ``properties`` rejects unknown keys
  unless it says ``x-kubernetes-preserve-unknown-fields``), as ``kubectl apply
  --validate=strict`` does;
- DataScienceCluster / DSCInitialization against ``tests/data/schemas/opendatahub_v2.yaml``
  (written from the operator's Go types; their CRDs are not published as files);
- core kinds (Namespace, Secret, ConfigMap, Job, ...) with kubernetes-validate, strict.

Every object's ``metadata.name`` must be a DNS-1123 name as well.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"
K8S_VERSION = "1.37.0"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[str, dict[str, Any]]:
    """``{"<group>/<version>/<Kind>": strict schema}`` of every CRD under the shared schemas."""
    if not SHARED_SCHEMAS.is_dir():
        raise FileNotFoundError(
            f"{SHARED_SCHEMAS} is missing: the CRD schemas live beside the checkout "
            "(../shared/schemas); tests cannot validate manifests without them")
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(SHARED_SCHEMAS.glob("*/*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                out[f"{group}/{version['name']}/{kind}"] = _strict(schema)
    local = yaml.safe_load((REPO / "tests" / "data" / "schemas" / "opendatahub_v2.yaml")
                           .read_text())
    definitions = local.pop("definitions")
    for key, schema in local.items():
        out[key] = {**schema, "definitions": definitions}
    return out


@cache
def _validator(key: str) -> Any:
    # checked once: a CRD schema is large, and jsonschema.validate re-checks it on every call
    schema = crd_schemas()[key]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_object(obj: dict[str, Any]) -> str:
    """Validate one object; returns how (``crd`` or ``core``), raises on the first error."""
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    name = (obj.get("metadata") or {}).get("name", "")
    assert _DNS1123.match(name) and len(name) <= 253, f"{kind} name {name!r} is not DNS-1123"
    key = f"{api}/{kind}"
    if key in crd_schemas():
        _validator(key).validate(obj)
        return "crd"
    if "/" in api and not api.startswith(("apps/", "batch/", "rbac.authorization.k8s.io/")):
        raise AssertionError(f"no schema for {key}: add its CRD to ../shared/schemas")
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return "core"


def validate_all(objects: list[dict[str, Any]]) -> dict[str, int]:
    """Validate every object; returns the count per kind."""
    counts: dict[str, int] = {}
    for obj in objects:
        try:
            validate_object(obj)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            raise AssertionError(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: "
                                 f"{exc}") from None
        counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
    return counts


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML file (comments and empty documents skipped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
