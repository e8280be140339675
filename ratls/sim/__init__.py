"""Simulated confidential-VM hardware: a software AMD-SP and an ephemeral swtpm vTPM."""

from __future__ import annotations
