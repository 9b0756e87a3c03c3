"""
Loading each data format
========================

Every loader returns a :class:`sklearn.utils.Bunch` with ``images`` (uint8,
``(n, H, W, C)``), ``target``, ``target_names`` and, where the data set has
them, ``groups`` (lesion or patient ids: split by them, never by image). This
example loads the HAM10000 / ISIC 2018 layout, a MedMNIST ``.npz``, a folder of
images per class and a multi-label CSV table. The first two are found in
``FEWMED_DATA`` / the cache or downloaded (synthetic stand-ins otherwise);
the last two are written here, from synthetic images, to a temporary folder.
"""

# %%
# HAM10000 (a folder with ``HAM10000_metadata.csv``, or the ISIC 2018 Task 3 files)
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from fewmed.datasets import (
    list_datasets,
    load_ham10000_or_synthetic,
    load_image_folder,
    load_medmnist_or_synthetic,
    load_multilabel_csv,
    make_synthetic_lesions,
)

ham, _ = load_ham10000_or_synthetic(size=28, verbose=0)
print("HAM10000:", ham.source)
print("  images", ham.images.shape, ham.images.dtype, "classes", ham.target_names.tolist())
if ham.groups is not None:
    print("  lesions:", len(np.unique(ham.groups)), "for", len(ham.target), "images")

# %%
# A MedMNIST file keeps its official splits apart
retina, _ = load_medmnist_or_synthetic("retinamnist", verbose=0)
print("RetinaMNIST:", retina.source)
print(
    "  task:",
    retina.task,
    "| train / val / test:",
    [retina[s].images.shape[0] for s in ("train", "val", "test")],
)

# %%
# A folder of images per class: my_fundus/<class>/<image>
tmp = Path(tempfile.mkdtemp(prefix="fewmed_example_"))
lesions = make_synthetic_lesions(n_classes=2, n_per_class=6, size=32, random_state=0)
for i, (image, label) in enumerate(zip(lesions.images, lesions.target)):
    folder = tmp / "my_fundus" / ["glaucoma", "normal"][label]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{i:04d}.png")
folder_data = load_image_folder(tmp / "my_fundus", size=28)
print("image folder:", folder_data.images.shape, folder_data.target_names.tolist())

# %%
# A multi-label table: one row per image, findings separated by "|"
findings = ["Effusion", "Effusion|Mass", "No Finding", "Mass"] * 3
rows = ["Image Index,Finding Labels,Patient ID"]
for i, label in enumerate(findings):
    Image.fromarray(lesions.images[i]).save(tmp / f"cxr_{i}.png")
    rows.append(f"cxr_{i}.png,{label},{i // 2}")
(tmp / "labels.csv").write_text("\n".join(rows) + "\n")
chest = load_multilabel_csv(tmp / "labels.csv", tmp, size=28)
print("multi-label:", chest.images.shape, chest.target_names.tolist())
print("  first rows of the indicator matrix:\n", chest.target[:4])

# %%
# What fewmed knows, and what is already in the data home
for row in list_datasets()[:4]:
    print(f"{row['name']:14s} {row['kind']:28s} cached={row['cached']}")

fig, axes = plt.subplots(1, 4, figsize=(8, 2.4))
shown = [
    (ham.images[0], "HAM10000"),
    (retina.train.images[0], "RetinaMNIST"),
    (folder_data.images[0], "image folder"),
    (chest.images[0], "multi-label CSV"),
]
for ax, (image, title) in zip(axes, shown):
    ax.imshow(image.squeeze(), cmap="gray")
    ax.set(title=title, xticks=[], yticks=[])
fig.tight_layout()
