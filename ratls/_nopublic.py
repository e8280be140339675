"""Classes whose instances only their own module may create.

Verified results must be impossible to forge: a caller that could write
``VerifiedSnpReport(report=...)`` would bypass every check.  A class using
:class:`NoPublicConstructor` as its metaclass refuses direct calls; the verifier
creates instances with ``cls._create(...)``.  (The same trick trio uses for its
internal types.)
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["NoPublicConstructor"]

_T = TypeVar("_T")


class NoPublicConstructor(type):
    """Metaclass: ``Cls(...)`` raises TypeError, ``Cls._create(...)`` works."""

    def __call__(cls, *args: object, **kwargs: object) -> Any:  # noqa: ANN401
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "instances come from the verifier"
        )

    def _create(cls: type[_T], *args: object, **kwargs: object) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]
