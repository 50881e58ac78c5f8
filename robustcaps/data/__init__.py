"""smallNORB-format data: the binary format and files (`norb`, `norb_format`), the Dataset, the viewpoint
splits (`splits.make_split`), the paper's transforms, download (`fetch`) and checks (`norb_verify`); the
rendered stand-in is in `standin`. The splits and transforms import torchvision, so they are not imported
here: `robustcaps --help` stays fast."""

from robustcaps.data.dataset import SmallNORB
from robustcaps.data.norb import CLASSES, dataset_identity

__all__ = ["CLASSES", "SmallNORB", "dataset_identity"]
