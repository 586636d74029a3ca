"""Raw logs → per-user logs → splits with fixed evaluation negatives."""

from fedrec.data.dataset import DatasetSpec, SplitSpec, load_log, load_split
from fedrec.data.errors import DataError
from fedrec.data.feedback import apply_feedback_mode, drop_sparse_users
from fedrec.data.loaders import LOADERS, shared_data_dir
from fedrec.data.log import InteractionLog, build_log
from fedrec.data.splits import SPLITS, Split, make_split
from fedrec.data.synthetic import SHAPES, SyntheticShape, generate
from fedrec.data.user_logs import UserLog, split_by_user

__all__ = [
    "LOADERS",
    "SHAPES",
    "SPLITS",
    "DataError",
    "DatasetSpec",
    "InteractionLog",
    "Split",
    "SplitSpec",
    "SyntheticShape",
    "UserLog",
    "apply_feedback_mode",
    "build_log",
    "drop_sparse_users",
    "generate",
    "load_log",
    "load_split",
    "make_split",
    "shared_data_dir",
    "split_by_user",
]
