"""vmlaunch-rig: prove a VMX launch driver across kernels x CPU models.

Pipeline, one module per stage, data flowing one way:

    matrix (rig.matrix) -> artifacts (rig.artifacts) -> provision (rig.lanes.*)
      -> guest (rig.guest) -> verdict (rig.verdict) -> report (pytest JUnit, rig.report)
"""

__version__ = "0.1.0"
