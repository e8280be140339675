"""The public API is deliberate: `__all__` matches what modules export, and classes are final."""

from __future__ import annotations

import enum
import importlib
import inspect
from typing import Protocol

import pytest

PUBLIC_MODULES = [
    "ratls",
    "ratls.hazmat.snp",
    "ratls.hazmat.tpm",
    "ratls.attesters",
    "ratls.sim",
    "ratls.spdm",
]


def public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    return list(module.__all__)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_unique_and_resolvable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = public_names(module_name)
    assert names == sorted(set(names), key=names.index), "duplicates in __all__"
    for name in names:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("ratls")
    }
    assert exported <= set(module.__all__), (
        f"not in __all__: {sorted(exported - set(module.__all__))}"
    )


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_classes_are_final(module_name: str) -> None:
    module = importlib.import_module(module_name)
    not_final = []
    for name in module.__all__:
        value = getattr(module, name)
        if not inspect.isclass(value):
            continue
        if issubclass(value, BaseException | enum.Enum) or Protocol in getattr(
            value, "__mro__", ()
        ):
            continue  # exception hierarchies and enums are open or closed by design
        if getattr(value, "_is_protocol", False):
            continue
        if not getattr(value, "__final__", False):
            not_final.append(name)
    assert not not_final, f"public classes that are not @final: {not_final}"
