"""Training: the loop (phases.py), its objective (objectives.py), whole-dataset passes
(inference.py), the checkpoint (checkpoint.py), the network (model.py) and the process group
(distributed.py)."""
from .checkpoint import TrainState
from .distributed import Dist, process_group
from .inference import assign_all, details, encode_all, reconstruct_all
from .model import DVCModel
from .phases import HISTORY_KEYS, PHASES, Context, train

__all__ = ["Context", "DVCModel", "Dist", "HISTORY_KEYS", "PHASES", "TrainState", "assign_all",
           "details", "encode_all", "process_group", "reconstruct_all", "train"]
