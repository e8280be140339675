"""Evidence producers for real confidential-VM hardware."""

from __future__ import annotations
