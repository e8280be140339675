"""The ratls TEE network gateway."""

from __future__ import annotations
