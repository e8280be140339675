"""Simulated confidential-VM hardware: a software AMD-SP and an ephemeral swtpm vTPM."""

from __future__ import annotations

from ._amd_sp import SIMULATOR_MARK as SIMULATOR_MARK
from ._amd_sp import SimulatedAmdSp as SimulatedAmdSp
from ._amd_sp import simulated_amd_sp as simulated_amd_sp

__all__ = ["SIMULATOR_MARK", "SimulatedAmdSp", "simulated_amd_sp"]
