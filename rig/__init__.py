"""vmlaunch-rig: prove a VMX launch driver across kernels x CPU models.

The pipeline, one package per stage, data flowing one way:

    matrix (rig.matrix) -> artifacts (rig.artifacts) -> guest (rig.guest: the flavours)
      -> provision (rig.lanes) -> verdict (rig.verdict) -> report (pytest JUnit, rig.report)

rig.runner runs one cell through it; rig.plugin makes pytest items of a matrix file; rig.cli
is `rig`.
"""

__version__ = "0.1.0"
