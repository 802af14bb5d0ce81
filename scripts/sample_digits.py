"""Write the first N digits of the bundled sample's test set as PNG files (for trying `predict`).

usage: python scripts/sample_digits.py OUT_DIR [N]   prints the paths it wrote
"""

import argparse
from pathlib import Path

from PIL import Image

from ignite_mnist import data

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("out", type=Path, metavar="OUT_DIR")
parser.add_argument("n", type=int, nargs="?", default=5, metavar="N", help="how many digits, 1 to 1000 (default 5)")
args = parser.parse_args()
if not 1 <= args.n <= 1000:
    parser.error(f"N must be between 1 and 1000 (the sample's test set), not {args.n}")
args.out.mkdir(parents=True, exist_ok=True)
images, labels = data.load("mnist-sample", Path("."))["test"]
for i in range(args.n):
    path = args.out / f"test{i}_label{int(labels[i])}.png"
    Image.fromarray(images[i].numpy()).save(path)
    print(path)
