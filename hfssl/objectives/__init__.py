from hfssl.objectives.base import Objective, ObjectiveOutput

__all__ = ["Objective", "ObjectiveOutput"]
