"""Width: parametrisations (SP, NTK, μP, depth-μP) and the coordinate check, for the zoo's
models and for any model built at two widths."""

from initlab.width.coord import CoordResult, coord_check
from initlab.width.parametrize import PARAMS, parametrize
from initlab.width.roles import Role, infer_roles

__all__ = ["PARAMS", "CoordResult", "Role", "coord_check", "infer_roles", "parametrize"]
