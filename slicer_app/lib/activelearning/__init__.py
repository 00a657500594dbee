from .least_confidence import LeastConfidence
