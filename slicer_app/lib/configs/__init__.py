from .deepedit import DeepEdit
from .segmentation import Segmentation

MODELS = {"segmentation": Segmentation, "deepedit": DeepEdit}
