from .deepedit import DeepEdit
from .segmentation import Segmentation
