"""Errors of the concept-learning package (all are jaxlm.errors.JaxlmError subclasses)."""

from jaxlm.errors import JaxlmError


class ConceptGraphError(JaxlmError):
    """A malformed latent DAG: unknown node, cycle, cardinality < 2, bad preset name."""


class ConceptDataError(JaxlmError):
    """Bad data for a rank test: non-integer or out-of-range codes, wrong shape, too few samples."""


class NotIdentifiable(JaxlmError):
    """The rank pattern does not determine a latent hierarchy under the procedure's conditions.

    Raised instead of returning a graph: `reason` says which condition failed and `active` lists the nodes
    that were still unexplained when the procedure stopped (the partial graph is in `partial`).
    """

    def __init__(self, reason: str, active=(), partial=None):
        self.reason = reason
        self.active = tuple(active)
        self.partial = partial
        super().__init__(f"not identifiable: {reason}" + (f" (unexplained nodes: {', '.join(self.active)})"
                                                          if self.active else ""))
