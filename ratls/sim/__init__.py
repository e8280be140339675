"""Simulated confidential-VM hardware: a software AMD-SP and an ephemeral swtpm vTPM."""

from __future__ import annotations

from ._amd_sp import SIMULATOR_MARK as SIMULATOR_MARK
from ._amd_sp import SimulatedAmdSp as SimulatedAmdSp
from ._amd_sp import simulated_amd_sp as simulated_amd_sp
from ._svsm import SimulatedSvsm as SimulatedSvsm
from ._swtpm import Swtpm as Swtpm
from ._swtpm import manufacture_vtpm as manufacture_vtpm

__all__ = [
    "SIMULATOR_MARK",
    "SimulatedAmdSp",
    "SimulatedSvsm",
    "Swtpm",
    "manufacture_vtpm",
    "simulated_amd_sp",
]
