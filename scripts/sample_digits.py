"""Write the first N digits of the bundled sample's test set as PNG files (for trying `predict`).

usage: python scripts/sample_digits.py OUT_DIR [N]   prints the paths it wrote
"""

import sys
from pathlib import Path

from PIL import Image

from ignite_mnist import data

out, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5
out.mkdir(parents=True, exist_ok=True)
images, labels = data.load("mnist-sample", Path("."))["test"]
for i in range(n):
    path = out / f"test{i}_label{int(labels[i])}.png"
    Image.fromarray(images[i].numpy()).save(path)
    print(path)
