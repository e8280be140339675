"""The gateway's public API: __all__ matches what is exported, public classes are final."""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil

import pytest

import gateway
from ratls._errors import RatlsError


def test_all_matches_exports() -> None:
    exported = {
        name
        for name, value in vars(gateway).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    exported -= {"annotations"}
    assert set(gateway.__all__) == exported
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None


MODULES = sorted(
    info.name for info in pkgutil.iter_modules(gateway.__path__) if info.name != "__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_real_and_classes_final(name: str) -> None:
    module = importlib.import_module(f"gateway.{name}")
    assert hasattr(module, "__all__"), name
    for symbol in module.__all__:
        value = getattr(module, symbol)
        if not inspect.isclass(value) or value.__module__ != module.__name__:
            continue
        if issubclass(value, BaseException | enum.Enum):
            continue  # exceptions are meant to be subclassed; enums are final already
        assert getattr(value, "__final__", False), f"{name}.{symbol} is not @final"


def test_gateway_errors_are_ratls_errors() -> None:
    assert issubclass(gateway.ConfigError, RatlsError)
