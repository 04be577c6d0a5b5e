"""A lower app never reaches a higher one, not even where import-linter cannot see it.

import-linter (pyproject.toml `[tool.importlinter]`) checks the imports between the layers.
These tests read the same layer order and scan every product module (not tests, not
migrations) for the other ways to reach up: `apps.get_model("<app>", ...)`, a model string
"<app>.<Model>" (ForeignKey, get_model, admin), and touching the admin registry of another app
(`admin.site.unregister(...)`, `site._registry`). See docs/architecture.md.
"""

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_STRING = re.compile(r"^(?P<app>[a-z_]+)\.(?P<model>[A-Z]\w*)$")


def _layers() -> dict[str, tuple[int, bool]]:
    """Each app of the layers contract: (its level, 0 the top; whether its siblings on the same
    level are independent, written "a | b")."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["type"] == "layers"]
    levels = {}
    for level, layer in enumerate(contract["layers"]):
        independent = "|" in layer
        for app in re.split(r"[|:]", layer):
            levels[app.strip()] = (level, independent)
    return levels


LAYERS = _layers()


def _product_modules() -> list[Path]:
    return sorted(
        path
        for app in LAYERS
        for path in (ROOT / app).rglob("*.py")
        if "migrations" not in path.relative_to(ROOT).parts
    )


def _reaches_up(source: str, target: str) -> bool:
    """Whether `source` may not name `target`: a higher layer, or an independent sibling."""
    if target not in LAYERS or target == source:
        return False
    source_level, independent = LAYERS[source]
    target_level, _ = LAYERS[target]
    return target_level < source_level or (target_level == source_level and independent)


def _scan() -> dict[str, list[str]]:
    found = {"get_model": [], "model_string": [], "admin_registry": []}
    for path in _product_modules():
        relative = path.relative_to(ROOT)
        _scan_module(found, relative.parts[0], str(relative), path.read_text())
    return found


def _scan_module(found: dict[str, list[str]], app: str, name: str, source: str) -> None:
    """Adds to `found` what module `name` of `app` reaches up to, each with its file and line."""
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            first = node.args[0] if node.args else None
            if (
                node.func.attr == "get_model"
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                target = first.value.split(".")[0]
                if _reaches_up(app, target):
                    found["get_model"].append(
                        f'{where}: {app} looks up a model of {target} (get_model("{first.value}"'
                        ", ...)), a higher layer"
                    )
            if node.func.attr == "unregister":
                found["admin_registry"].append(
                    f"{where}: {app} unregisters a ModelAdmin; compose the final admin in portal"
                )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODEL_STRING.match(node.value)
            if match and _reaches_up(app, match["app"]):
                found["model_string"].append(
                    f'{where}: {app} names the model "{node.value}" of {match["app"]}, '
                    "a higher layer"
                )
        elif isinstance(node, ast.Attribute) and node.attr == "_registry":
            owner = getattr(node.value, "attr", None) or getattr(node.value, "id", None)
            if owner == "site":
                found["admin_registry"].append(
                    f"{where}: {app} reaches into the admin site's _registry (patching another "
                    "app's admin); compose the final admin in portal"
                )


@pytest.fixture(scope="module")
def found():
    return _scan()


def test_the_layers_are_read_from_pyproject():
    assert LAYERS["billing_portal"][0] < LAYERS["portal"][0] < LAYERS["accounts"][0]
    assert LAYERS["usage"] == LAYERS["sso"]
    assert len(_product_modules()) > 100


def test_the_scan_names_file_and_line_of_each_reach():
    found = {"get_model": [], "model_string": [], "admin_registry": []}
    source = (
        "from django.apps import apps\n"
        "from django.contrib import admin\n"
        'apps.get_model("billing", "DunningCase")\n'
        'case = models.ForeignKey("retention.DeletionRecord", on_delete=models.CASCADE)\n'
        'owner = models.ForeignKey("accounts.User", on_delete=models.CASCADE)\n'
        "admin.site.unregister(Subscription)\n"
        "admin.site._registry.get(Organisation)\n"
    )
    _scan_module(found, "accounts", "accounts/example.py", source)
    assert found == {
        "get_model": [
            'accounts/example.py:3: accounts looks up a model of billing (get_model("billing", '
            "...)), a higher layer"
        ],
        "model_string": [
            'accounts/example.py:4: accounts names the model "retention.DeletionRecord" of '
            "retention, a higher layer"
        ],
        "admin_registry": [
            "accounts/example.py:6: accounts unregisters a ModelAdmin; compose the final admin "
            "in portal",
            "accounts/example.py:7: accounts reaches into the admin site's _registry (patching "
            "another app's admin); compose the final admin in portal",
        ],
    }
    sibling = {"get_model": [], "model_string": [], "admin_registry": []}
    _scan_module(sibling, "usage", "usage/example.py", 'x = "sso.SsoConfiguration"\n')
    assert sibling["model_string"], "usage and sso are independent siblings"


def test_no_app_looks_up_a_model_of_a_higher_layer(found):
    assert not found["get_model"], "\n".join(found["get_model"])


def test_no_app_names_a_model_of_a_higher_layer(found):
    assert not found["model_string"], "\n".join(found["model_string"])


def test_no_app_touches_the_admin_registry(found):
    assert not found["admin_registry"], "\n".join(found["admin_registry"])
