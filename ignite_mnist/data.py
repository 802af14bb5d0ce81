"""Data as tensors: the IDX files decoded once into uint8 tensors, batches drawn by index.

MNIST, Fashion-MNIST and the bundled sample share MNIST's IDX format, so one reader serves all three.
Each split becomes one uint8 tensor kept on the training device; a batch is a tensor of indexes (training)
or a slice (evaluation), and normalisation happens per batch on the device: no per-image Python work.
"""

import gzip
import hashlib
import math
import os
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ignite_mnist.errors import UserError, error_text, exists, is_dir, is_file

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
DIGITS = [str(d) for d in range(10)]
DATASETS = {
    # folder: torchvision's folder under --data-path; mean, std: of the training images, in [0, 1]
    "mnist": {"folder": "MNIST", "mean": 0.1307, "std": 0.3081, "classes": DIGITS},
    "mnist-sample": {"folder": None, "mean": 0.1307, "std": 0.3081, "classes": DIGITS},
    "fashion-mnist": {
        "folder": "FashionMNIST",
        "mean": 0.2860,
        "std": 0.3530,
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STEMS = [stem for pair in FILES.values() for stem in pair]
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


# ---- reading ------------------------------------------------------------------------------------


CACHE_UNUSED_DAYS = 30  # a decoded array not read for this long goes when another one is written
CACHE_FROM_BYTES = 1 << 20  # a compressed file this large or larger is decoded once: 0.3 s for Fashion-MNIST's


def read_idx(path: Path, fresh: bool = False) -> np.ndarray:
    """An IDX file of MNIST images ([n, 28, 28] uint8) or labels ([n] uint8), .gz or not, checked.

    A large .gz file is decoded once: the array is kept in the user's cache (decoded_cache), under a
    name made of the file's path, the SHA-256 of its bytes and its gzip trailer (CRC-32 and length of the
    data), so a file whose bytes change in any way is decoded anew. fresh: decoded again whatever the cache holds
    (and cached anew)."""
    cached = decoded_cache(path)
    array = _read_cached(cached) if cached and not fresh else None
    if array is None:
        array = _decode_idx(path)
        if cached:
            _write_cached(cached, array)
    return array


def cache_root() -> Path:
    """$XDG_CACHE_HOME/ignite-mnist (~/.cache/ignite-mnist where it is unset or not absolute, as XDG says);
    RuntimeError without a home directory."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "ignite-mnist"


def decoded_cache(path: Path):
    """Where the decoded array of .gz file `path` is kept: $XDG_CACHE_HOME/ignite-mnist (~/.cache), or None
    for a file too small to gain from it (or one that cannot be read: decoding it says why). The name holds the
    SHA-256 of the file's bytes (20 ms for Fashion-MNIST's 26 MB, where decoding takes 300): a file damaged or
    replaced in place, even with its old size, time and trailer, is not mistaken for the one decoded before."""
    try:
        if path.suffix != ".gz" or path.stat().st_size < CACHE_FROM_BYTES:
            return None
        with open(path, "rb") as f:
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):  # (hashlib.file_digest: Python 3.11)
                digest.update(chunk)
            digest = digest.hexdigest()[:32]
            f.seek(-8, os.SEEK_END)
            trailer = f.read(8).hex()  # CRC-32 and length (mod 2^32) of the uncompressed data
        root = cache_root()
    except (OSError, RuntimeError):  # unreadable (decoding says why), or no home directory
        return None
    return root / f"{path.name[:-3]}-{digest}-{trailer}.npy"  # by content: copies of a file in other folders share it


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_cached(cached: Path):
    """The cached array, or None where there is none or it is not exactly what its gzip file holds: MNIST's
    shapes, as many bytes as the trailer in its name says (checked from the header, before reading)."""
    uncompressed = int.from_bytes(bytes.fromhex(cached.stem.rsplit("-", 1)[1])[4:], "little")
    try:
        with open(cached, "rb") as f:
            read_header = _NPY_HEADERS.get(np.lib.format.read_magic(f))
            if read_header is None:
                return None
            shape, fortran_order, dtype = read_header(f)
            count = math.prod(shape)
            header = {1: 8, 3: 16}.get(len(shape))
            if (dtype != np.uint8 or fortran_order or header is None or shape[1:] not in ((), (28, 28))
                    or (header + count) % 2**32 != uncompressed
                    or os.fstat(f.fileno()).st_size != f.tell() + count):
                return None
            array = np.fromfile(f, dtype=np.uint8, count=count).reshape(shape)
    except (OSError, ValueError, EOFError):
        return None
    try:
        os.utime(cached)  # used now: what _write_cached keeps
    except OSError:  # (a cache this user may read, not write)
        pass
    return array


def _write_cached(cached: Path, array: np.ndarray) -> None:
    """Written whole or not at all (a temporary file, flushed to disk, then renamed); arrays not used for
    CACHE_UNUSED_DAYS (earlier versions of a file, data since deleted) are removed then. A cache that cannot be
    written is skipped: the file is decoded again next time."""
    temporary = cached.with_name(f".{cached.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, cached)
        unused_since = time.time() - CACHE_UNUSED_DAYS * 86400
        for old in cached.parent.glob("*.npy"):
            if old != cached and old.stat().st_mtime < unused_since:
                old.unlink(missing_ok=True)
    except OSError:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass


def _decode_idx(path: Path) -> np.ndarray:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"{path} is truncated or corrupt ({e}): replace it") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic == _IMAGES_MAGIC and len(raw) >= 16:
        n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        if (rows, cols) != (28, 28):
            raise UserError(f"{path} holds {rows}x{cols} images; MNIST images are 28x28")
        header, shape = 16, (n, 28, 28)
    elif magic == _LABELS_MAGIC and len(raw) >= 8:
        n = int.from_bytes(raw[4:8], "big")
        header, shape = 8, (n,)
    else:
        raise UserError(
            f"{path} is not an MNIST IDX file (magic number {magic}; expected {_IMAGES_MAGIC} for images, "
            f"{_LABELS_MAGIC} for labels): replace it"
        )
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise UserError(
            f"{path} is truncated or corrupt: its header announces {n} items ({expected} bytes) "
            f"but it holds {len(raw)} bytes: replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(images_path: Path, labels_path: Path, num_classes: int = 10, fresh: bool = False):
    """(images uint8 [n, 28, 28], labels int64 [n]) as torch tensors, after checking they belong together."""
    images, labels = read_idx(images_path, fresh), read_idx(labels_path, fresh)
    if images.ndim != 3:
        raise UserError(f"{images_path} holds labels, not images")
    if labels.ndim != 1:
        raise UserError(f"{labels_path} holds images, not labels")
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        i = int(np.argmax(labels >= num_classes))
        raise UserError(f"{labels_path}: label {labels[i]} at index {i} is out of range 0-{num_classes - 1}")
    return (torch.from_numpy(images if images.flags.writeable else images.copy()),
            torch.from_numpy(labels.astype(np.int64)))


# ---- finding the files --------------------------------------------------------------------------


def _find_in(folder: Path) -> dict:
    """{stem: path} of the IDX files present in folder, plain or .gz; OSError where a folder on the way may not be
    looked in."""
    found = {}
    for stem in STEMS:
        for name in (stem, stem + ".gz"):
            if is_file(folder / name):
                found[stem] = folder / name
                break
    return found


def _refusing_folder(folder: Path) -> Path:
    """The folder on the way to `folder` that this user may not look in: the deepest one that can be seen."""
    for path in (folder, *folder.parents):
        try:
            os.stat(path)
            return path
        except OSError:
            continue
    return folder


def locate(dataset: str, data_path: Path, download: bool = True, splits=("train", "test")) -> dict:
    """{"train": (images, labels), "test": (images, labels)} paths of `dataset` (of `splits`: the test set alone is
    enough to test).

    Looked for in torchvision's layout (DATA/MNIST/raw, DATA/FashionMNIST/raw) and directly in DATA
    (as Debian's dataset-fashion-mnist installs them); if absent, torchvision downloads them.
    """
    spec = DATASETS[dataset]
    if spec["folder"] is not None and exists(data_path) and not is_dir(data_path):  # not where a download goes
        raise UserError(f"--data-path {data_path} is not a folder: name the folder that holds the IDX files")
    folders = [SAMPLE_DIR] if spec["folder"] is None else [Path(data_path) / spec["folder"] / "raw", Path(data_path)]
    refused = None  # the first folder this user may not look in: named if the files are found nowhere
    for folder in folders:
        try:
            found = _find_in(folder)
        except OSError as e:
            refused = refused or (_refusing_folder(folder), e.strerror)
            continue
        if all(stem in found for split in splits for stem in FILES[split]):
            return {split: (found[FILES[split][0]], found[FILES[split][1]]) for split in splits}
    if refused:
        raise UserError(f"cannot look for the data in {refused[0]}: {refused[1]}")
    if spec["folder"] is None:
        raise UserError(f"the bundled sample is missing from {SAMPLE_DIR}: reinstall ignite-mnist")
    if download:
        _download(dataset, Path(data_path), splits)
        return locate(dataset, data_path, download=False, splits=splits)
    raise UserError(f"{dataset} is not in {data_path}")


class DatasetMissing(UserError):
    """The dataset is not where it was looked for, and could not be downloaded there."""


def _download(dataset: str, data_path: Path, splits=("train", "test")) -> None:
    import torchvision

    cls = torchvision.datasets.MNIST if dataset == "mnist" else torchvision.datasets.FashionMNIST
    raw = data_path / DATASETS[dataset]["folder"] / "raw"
    made = [folder for folder in (raw, raw.parent, data_path, *data_path.parents)  # deepest first
            if not exists(folder)]
    there_before = set(raw.iterdir()) if is_dir(raw) else set()
    try:
        for train in (True, False):
            cls(str(data_path), train=train, download=True)
    except Exception as e:
        # leave the data folder as it was: the partial files and the empty folders of the failed download go
        for path in (set(raw.iterdir()) if is_dir(raw) else set()) - there_before:
            if is_file(path):
                path.unlink(missing_ok=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (something else wrote there) or not ours to remove
                pass
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        files = ", ".join(stem + "(.gz)" for split in splits for stem in FILES[split])
        raise DatasetMissing(
            f"{dataset} is not in {data_path} and could not be downloaded ({reason}): put {files} in "
            f"{data_path / DATASETS[dataset]['folder'] / 'raw'} or in {data_path}"
        ) from None


def load(dataset: str, data_path: Path, fresh: bool = False, splits=("train", "test")) -> dict:
    """{"train": (images, labels), "test": (images, labels)}: uint8 and int64 CPU tensors (fresh: read_idx's), of
    `splits`."""
    num_classes = len(DATASETS[dataset]["classes"])
    return {split: read_split(*paths, num_classes, fresh)
            for split, paths in locate(dataset, data_path, splits=splits).items()}


def dataset_sizes(dataset: str, data_path: Path) -> dict:
    return {split: len(labels) for split, (_, labels) in load(dataset, data_path).items()}


def digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a split's images and labels as decoded (27 ms for Fashion-MNIST's 60,000 images): what `init`
    records of each split, so that later commands tell other data under the same file names from it."""
    sha = hashlib.sha256(images.contiguous().numpy())  # (the array's buffer itself: no copy)
    sha.update(labels.to(torch.uint8).numpy())
    return sha.hexdigest()


def unlike(dataset: str, images: torch.Tensor):
    """Why training images do not look like `dataset`'s, or None: their mean pixel far from the dataset's own (which
    normalises them), and, where it is near another dataset's, which. MNIST and Fashion-MNIST share the IDX format
    and its file names, so nothing else tells the one from the other."""
    if not len(images):
        return None
    total = int(images.contiguous().numpy().sum(dtype=np.uint64))  # (14 ms for Fashion-MNIST's; torch's int64 sum: 156)
    mean, expected = total / images.numel() / 255, DATASETS[dataset]["mean"]
    if abs(mean - expected) < 0.05:
        return None
    near = [name for name, spec in DATASETS.items() if abs(spec["mean"] - mean) < 0.02 and spec["folder"]]
    return (f"its training images' mean pixel is {mean:.3f}, where {dataset}'s is {expected:.3f}"
            + (f" ({near[0]}'s is {DATASETS[near[0]]['mean']:.3f})" if near else ""))


# ---- on the device ------------------------------------------------------------------------------


@dataclass
class TensorSet:
    """One split on the training device: images uint8 [n, 28, 28], labels int64 [n]."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: float
    std: float

    def __len__(self):
        return len(self.labels)

    def batch(self, index):
        """(x, y) for an index tensor or a slice: x normalised float32 [b, 1, 28, 28], as ToTensor+Normalize."""
        x = self.images[index].unsqueeze(1).float().div_(255).sub_(self.mean).div_(self.std)
        return x, self.labels[index]


def tensor_sets(dataset: str, data_path: Path, split: dict, device, digests: dict = None) -> dict:
    """TensorSets on `device`: "test", and each set of `split` ({"train": [...], "validation": [...]}, the
    persisted indexes into the training set); split {} gives the test set alone. digests: the experiment's record of
    its data ({"train": sha256, "test": sha256}, as digest() makes them), which the sets used must match."""
    spec = DATASETS[dataset]
    splits = ("train", "test") if split else ("test",)  # (the test set alone: its files are enough)
    loaded = load(dataset, data_path, splits=splits)
    train_images, train_labels = loaded.get("train", (None, torch.zeros(0)))
    highest = max((max(v) for v in split.values() if v), default=-1)
    if highest >= len(train_labels):
        raise UserError(
            f"the experiment's split refers to training image {highest}, but {dataset} in {data_path} "
            f"has {len(train_labels)}: use the data the experiment was created with"
        )
    differing = [name for name in splits if digests and name in digests and digest(*loaded[name]) != digests[name]]
    if differing:  # the files' own bytes, not a damaged decoded cache? (decoded again, the cache then replaced)
        loaded = load(dataset, data_path, fresh=True, splits=splits)
        train_images, train_labels = loaded.get("train", (None, torch.zeros(0)))
    for name in differing:
        if digest(*loaded[name]) != digests[name]:
            raise UserError(f"the {'training' if name == 'train' else name} set of {dataset} in {data_path} is not "
                            "the one the experiment was created with (its images or labels differ): use the data the "
                            "experiment was created with")
    sets = {"test": TensorSet(*(t.to(device) for t in loaded["test"]), spec["mean"], spec["std"])}
    for name, indexes in split.items():
        index = torch.tensor(indexes, dtype=torch.int64)
        sets[name] = TensorSet(train_images[index].to(device), train_labels[index].to(device), spec["mean"], spec["std"])
    return sets


class ShuffledBatches:
    """Training batches: index tensors into a TensorSet, in an order drawn anew each epoch from (seed, epoch).

    The order depends on nothing but the seed and the epoch, so a resumed run draws exactly the batches
    an uninterrupted one would. With world_size w (as torch's DistributedSampler): the permutation is
    padded to a multiple of w, rank r takes every w-th index, in batches of batch_size // w, so every
    rank runs the same number of steps. Call set_epoch() before each epoch (the trainer does, on
    EPOCH_STARTED); the permutation is drawn lazily, when the epoch's first batch is asked for.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, device="cpu"):
        self.n, self.seed, self.rank, self.world_size, self.device = n, seed, rank, world_size, device
        self.batch_size = max(1, batch_size // world_size)
        self.per_rank = math.ceil(n / world_size)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.per_rank / self.batch_size)

    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        padding = self.per_rank * self.world_size - self.n
        if padding:
            order = torch.cat([order, order[:padding]])
        return order[self.rank::self.world_size]

    def __iter__(self):
        yield from self.permutation().to(self.device).split(self.batch_size)


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
    """Slices covering this rank's contiguous share of n items, each item on exactly one rank.

    No padding (unlike training): metrics summed over ranks then count every item once.
    """
    share = math.ceil(n / world_size)
    start, stop = min(n, rank * share), min(n, (rank + 1) * share)
    return [slice(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)]


# ---- images for predict -------------------------------------------------------------------------


BLANK_RANGE = 16  # an image whose pixels span fewer grey levels than this is blank (paper, scanner noise)


def is_blank(digit: torch.Tensor) -> bool:
    """Whether a digit from image_as_digit has no strokes at all (its image was one colour)."""
    return not bool(digit.any())


def image_as_digit(source, name: str = None, max_pixels: int = None, digits: bool = True) -> torch.Tensor:
    """An image as an MNIST digit: uint8 [28, 28], light strokes on a dark background.

    `source` is a path, the file's bytes, or a binary file object; `name` names it in error messages (by
    default the path, or "the image"). It is inverted if its background is light. For a release of digits
    (`digits`), its contrast is then stretched (a grey background to black, faint strokes to white:
    _full_contrast), and it is prepared as MNIST's digits were, the ink cropped, scaled to fit 20x20 and centred
    by its centre of mass in 28x28, unless it is a 28x28 image already so (an MNIST digit: taken as it is, the
    test set's own pixels). Otherwise (a Fashion-MNIST release) a 28x28 image is taken as it is, and any other
    size prepared as Fashion-MNIST's were: trimmed to the thing, its longer side scaled to 28, centred in 28x28.
    A blank image (one colour, give or take noise) is an all-dark digit. An image of more than `max_pixels` pixels
    (default: Pillow's Image.MAX_IMAGE_PIXELS) is refused before it is decoded: a decompression bomb costs nothing.
    """
    import io
    import warnings

    from PIL import Image, ImageOps

    if isinstance(source, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(source), name or "the image"
    elif isinstance(source, (str, Path)):
        source = Path(source)
        name = name or str(source)
        if is_dir(source):
            raise UserError(f"{name} is a directory, not an image file")
        if exists(source) and not is_file(source):  # a FIFO or a device: reading it could wait forever
            raise UserError(f"{name} is not a regular file, not an image file")
    else:
        name = name or "the image"
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            opened = Image.open(source)
        with opened:
            width, height = opened.size
            if limit and width * height > limit:
                raise UserError(f"{name} is {width}x{height} pixels, more than the limit of {limit} pixels "
                                "(a decompression bomb?)")
            ImageOps.exif_transpose(opened, in_place=True)  # in place: no copy of a large image to turn none
            image = _eight_bit(_shrunk(opened), name)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                image = _on_contrasting_background(image.convert("RGBA"))
            image = image.convert("L")
    except (UserError, MemoryError):  # out of memory is the machine's trouble, not the file's
        raise
    except FileNotFoundError:
        raise UserError(f"{name} does not exist") from None
    except Image.DecompressionBombError as e:  # Pillow's own check, on opening (over twice its limit)
        raise UserError(f"{name} has too many pixels ({str(e).split(',')[0]}): a decompression bomb?") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"{name} is not an image file that can be read (no image format recognised)") from None
    except Exception as e:  # whatever a malformed file makes a decoder raise: OSError, SyntaxError, ValueError...
        reason = f"{type(e).__name__}: {error_text(e, 150)}" if str(e).strip() else type(e).__name__
        raise UserError(f"{name} is not an image file that can be read ({reason})") from None
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.max() - pixels.min() < BLANK_RANGE:  # one colour, give or take noise: no strokes to read
        return torch.zeros((28, 28), dtype=torch.uint8)
    if background_is_light(pixels):  # dark strokes on a light background: make it MNIST's way round
        pixels = 255 - pixels
    if digits:
        pixels = _full_contrast(pixels)
    if digits and (pixels.shape != (28, 28) or not _placed_like_mnist(pixels)):
        pixels = _center_like_mnist(pixels)
    elif pixels.shape != (28, 28):
        pixels = _fitted_like_fashion_mnist(pixels)
    return torch.from_numpy(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _edges(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def _full_contrast(pixels: np.ndarray) -> np.ndarray:
    """Light strokes on a dark background stretched to MNIST's range: the background (its edges' median) to 0, the
    brightest stroke to 255. A pencil digit on paper, a faint or a grey one, reads as MNIST's ink; an image whose
    background is near black and strokes near white already (MNIST's own: 0 and 254-255) is left as it is."""
    low, high = float(np.median(_edges(pixels))), float(pixels.max())
    if (low <= 8 and high >= 200) or high - low < BLANK_RANGE:
        return pixels
    return np.clip((pixels - low) * (255 / (high - low)), 0, 255)


def _placed_like_mnist(pixels: np.ndarray) -> bool:
    """Whether a 28x28 digit is already placed as MNIST's are: its ink within 20x20, its centre of mass within a
    pixel of the centre (MNIST's own test digits: within half a pixel, and at most 20 wide)."""
    ink = pixels > 0.2 * pixels.max()
    if not ink.any():
        return True
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    total = pixels.sum()
    cy = (pixels.sum(axis=1) * np.arange(28)).sum() / total
    cx = (pixels.sum(axis=0) * np.arange(28)).sum() / total
    return rows[-1] - rows[0] < 20 + 1 and cols[-1] - cols[0] < 20 + 1 and abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def background_is_light(pixels: np.ndarray) -> bool:
    """Whether the image's background, what lies along its edges, is light: the median of its outermost pixels.
    (Not the whole image's median: a light garment fills most of a dark Fashion-MNIST image, and that rule turned
    19% of Fashion-MNIST's test images the wrong way round; this one turns none of MNIST's or Fashion-MNIST's test
    images, and 2 of Fashion-MNIST's 60,000 training images. A digit cropped so tightly that its strokes fill the
    edges can still be taken the wrong way round.)"""
    return bool(np.median(_edges(pixels)) > 127)


def _eight_bit(image, name: str):
    """A greyscale image of more than 8 bits (16-bit, 32-bit or floating-point) as 8-bit greyscale, where Pillow's
    convert("L") would clip every value above 255 to white (a 16-bit scan became blank). Values already within 0-255
    are kept; larger whole numbers scaled from the range of their bit depth (a 12-bit image's 0-4095, a 16-bit one's
    0-65535); floats within 0-1 taken as 0-1; anything else (negative values) stretched from its lowest value to its
    highest. NaN or infinite values are refused. Other modes as they are."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    if image.mode not in ("I", "F"):
        return image
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"{name} holds pixel values that are not numbers (NaN or infinite)")
    low, high = values.min(), values.max()
    if image.mode == "F" and low >= 0 and high <= 1:
        values = values * 255
    elif low >= 0 and high > 255 and image.mode == "I":
        values = values * (255 / (2 ** int(high).bit_length() - 1))
    elif low < 0 or high > 255:
        values = (values - low) * (255 / (high - low))
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")


WORK_SIDE = 1024  # pixels: a larger image is shrunk to this on its longer side before any other work


def _shrunk(image):
    """The image box-averaged down to WORK_SIDE pixels on its longer side, if larger: a 20-pixel digit needs no
    more, and each later step then copies a few MB, not 100 MB and more (a 25-megapixel RGBA image took 680 MB
    to prepare). Modes that Image.reduce does not take are converted first, to RGBA where they carry
    transparency, else to L (what the digit becomes anyway)."""
    from PIL import Image

    factor = -(-max(image.size) // WORK_SIDE)
    if factor <= 1:
        return image
    if image.mode == "I;16":  # (reduce does not take it; a box resize does, without a 32-bit copy of the whole)
        return image.resize((-(-image.width // factor), -(-image.height // factor)), Image.Resampling.BOX)
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "L")
    return image.reduce(factor)


def _on_contrasting_background(image):
    """An RGBA image flattened onto black if what is drawn (its opaque pixels) is light, else onto white: strokes
    on a transparent background stay visible whatever their colour."""
    from PIL import Image

    alpha = np.asarray(image.getchannel("A"), dtype=np.float64)
    luminance = np.asarray(image.convert("RGB").convert("L"), dtype=np.float64)
    light = alpha.sum() > 0 and (luminance * alpha).sum() / alpha.sum() > 127
    return Image.alpha_composite(Image.new("RGBA", image.size, "black" if light else "white"), image)


def _ink_scaled(pixels: np.ndarray, ink_above: float, longer_side: int):
    """The box around the pixels brighter than `ink_above` of the brightest, its longer side scaled to
    `longer_side` (Lanczos); None where there is no ink."""
    from PIL import Image

    ink = pixels > ink_above * pixels.max() if pixels.max() > 0 else np.zeros_like(pixels, dtype=bool)
    if not ink.any():
        return None
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = longer_side / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32).clip(0, 255)


def _fitted_like_fashion_mnist(pixels: np.ndarray) -> np.ndarray:
    """As Fashion-MNIST's images were made from product photos: trimmed to the thing (any pixel above the
    background), the longer side scaled to 28, the shorter one centred."""
    thing = _ink_scaled(pixels, 0.05, 28)
    canvas = np.zeros((28, 28), np.float32)
    if thing is not None:
        top, left = (28 - thing.shape[0]) // 2, (28 - thing.shape[1]) // 2
        canvas[top:top + thing.shape[0], left:left + thing.shape[1]] = thing
    return canvas


def _center_like_mnist(pixels: np.ndarray) -> np.ndarray:
    digit = _ink_scaled(pixels, 0.2, 20)
    if digit is None:
        return np.zeros((28, 28), np.float32)
    total = digit.sum() or 1.0
    cy = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    cx = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(np.clip(round(14 - cy), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - digit.shape[1]))
    canvas = np.zeros((28, 28), np.float32)
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return canvas
