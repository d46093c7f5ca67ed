"""Verdicts: from a cell's build and what its guest said to one StageVerdict per stage.

    judge(cell, build, boot, arranged) -> CellVerdict    (rig.verdict.judge)

grammar (the driver's lines) and sdm (the SDM's tables) decode; oops finds kernel trouble;
reading turns the guest's transcript (rig.guest.protocol) into runs of driver records;
stages holds each stage's rules; judge puts them together, once per cell.
"""

from rig.verdict.grammar import DriverRecord, decode_failure, parse_driver_line, split_attempts
from rig.verdict.judge import judge
from rig.verdict.reading import GuestReport, Run, Stream, parse_console, parse_guest
from rig.verdict.sdm import decode_exit_reason

__all__ = [
    "DriverRecord",
    "GuestReport",
    "Run",
    "Stream",
    "decode_exit_reason",
    "decode_failure",
    "judge",
    "parse_console",
    "parse_driver_line",
    "parse_guest",
    "split_attempts",
]
