"""MedMNIST v2 ``.npz`` loader and the table of the 2D MedMNIST sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._base import PathLike

MEDMNIST_LICENCE = "CC BY 4.0"
MEDMNIST_CITATION = (
    "Yang J., Shi R., Wei D., Liu Z., Zhao L., Ke B., Pfister H., Ni B. MedMNIST v2 - A "
    "large-scale lightweight benchmark for 2D and 3D biomedical image classification. "
    "Scientific Data 10, 41 (2023). doi:10.1038/s41597-022-01721-8"
)
MEDMNIST_HOMEPAGE = "https://medmnist.com/"
SPLITS = ("train", "val", "test")

_ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)


def _info(about, task, labels, n_channels, md5, licence=MEDMNIST_LICENCE):
    md5_28, md5_64, md5_128, md5_224 = md5
    return {
        "about": about,
        "task": task,
        "labels": tuple(labels),
        "n_channels": n_channels,
        "md5": {28: md5_28, 64: md5_64, 128: md5_128, 224: md5_224},
        "licence": licence,
    }


#: Label names, task types, channels and MD5 sums (by image size) of the 2D
#: MedMNIST sets, from MedMNIST 3.0's ``medmnist/info.py`` (Zenodo record 10519652).
MEDMNIST_INFO: dict[str, dict] = {
    "pathmnist": _info(
        "colon pathology (H&E patches, NCT-CRC-HE-100K / CRC-VAL-HE-7K)",
        "multi-class",
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        3,
        (
            "a8b06965200029087d5bd730944a56c1",
            "55aa9c1e0525abe5a6b9d8343a507616",
            "ac42d08fb904d92c244187169d1fd1d9",
            "2c51a510bcdc9cf8ddb2af93af1eadec",
        ),
    ),
    "chestmnist": _info(
        "chest X-ray (NIH ChestX-ray14), 14 findings",
        "multi-label, binary-class",
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        1,
        (
            "02c8a6516a18b556561a56cbdd36c4a8",
            "9de6cd0b934ebb5b7426cfba5efbae16",
            "db107e5590b27930b62dbaf558aebee3",
            "45bd33e6f06c3e8cdb481c74a89152aa",
        ),
    ),
    "dermamnist": _info(
        "dermoscopy (HAM10000), 7 diagnoses; label order = sorted HAM10000 dx codes "
        "akiec, bcc, bkl, df, mel, nv, vasc",
        "multi-class",
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        3,
        (
            "0744692d530f8e62ec473284d019b0c7",
            "b70a2f5635c6199aeaa28c31d7202e1f",
            "2defd784463fa5243564e855ed717de1",
            "8974907d8e169bef5f5b96bc506ae45d",
        ),
        licence="CC BY-NC 4.0",
    ),
    "octmnist": _info(
        "retinal optical coherence tomography",
        "multi-class",
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        1,
        (
            "c68d92d5b585d8d81f7112f81e2d0842",
            "e229e9440236b774d9f0dfef9d07bdaf",
            "0a97e76651ace45c5d943ee3f65b63ae",
            "abc493b6d529d5de7569faaef2773ba3",
        ),
    ),
    "pneumoniamnist": _info(
        "paediatric chest X-ray, pneumonia vs normal",
        "binary-class",
        ("normal", "pneumonia"),
        1,
        (
            "28209eda62fecd6e6a2d98b1501bb15f",
            "8f4eceb4ccffa70c672198ea285246c6",
            "05b46931834c231683c68f40c47b2971",
            "d6a3c71de1b945ea11211b03746c1fe1",
        ),
    ),
    "retinamnist": _info(
        "colour fundus photographs (DeepDRiD), diabetic retinopathy grades 0-4",
        "ordinal-regression",
        ("0", "1", "2", "3", "4"),
        3,
        (
            "bd4c0672f1bba3e3a89f0e4e876791e4",
            "afda852cc34dcda56f86ad2b2457dbcc",
            "e48e916a24454daf90583d4e6efb1a18",
            "eae7e3b6f3fcbda4ae613ebdcbe35348",
        ),
    ),
    "breastmnist": _info(
        "breast ultrasound (BUSI); normal and benign merged against malignant",
        "binary-class",
        ("malignant", "normal, benign"),
        1,
        (
            "750601b1f35ba3300ea97c75c52ff8f6",
            "742edef2a1fd1524b2efff4bd7ba9364",
            "363e4b3f8d712e9b5de15470a2aaadf1",
            "b56378a6eefa9fed602bb16d192d4c8b",
        ),
    ),
    "bloodmnist": _info(
        "blood cell microscopy",
        "multi-class",
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        3,
        (
            "7053d0359d879ad8a5505303e11de1dc",
            "2b94928a2ae4916078ca51e05b6b800b",
            "adace1e0ed228fccda1f39692059dd4c",
            "b718ff6835fcbdb22ba9eacccd7b2601",
        ),
    ),
    "tissuemnist": _info(
        "kidney cortex microscopy (BBBC051)",
        "multi-class",
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        1,
        (
            "ebe78ee8b05294063de985d821c1c34b",
            "123ece2eba09d0aa5d698fda57103344",
            "61b955355d7425a89687b06cca3ce0c2",
            "b077128c4a949f0a4eb01517f9037b9c",
        ),
    ),
    "organamnist": _info(
        "abdominal CT (LiTS), axial view, 11 organs",
        "multi-class",
        _ORGANS,
        1,
        (
            "68e3f8846a6bd62f0c9bf841c0d9eacc",
            "2dcccc29b88e6da5a01161ef20cda288",
            "eeae80d0a227a8d099027e1b3cfd3b60",
            "50747347e05c87dd3aaf92c49f9f3170",
        ),
    ),
    "organcmnist": _info(
        "abdominal CT (LiTS), coronal view, 11 organs",
        "multi-class",
        _ORGANS,
        1,
        (
            "b9ceb9546e10131b32923c5bbeaea2b1",
            "3ce34a8724ea6f548e6db4744d03b6a9",
            "773c1f009daa3fe5d9a2a201b2a7ed94",
            "050f5e875dc056f6768abf94ec9995d1",
        ),
    ),
    "organsmnist": _info(
        "abdominal CT (LiTS), sagittal view, 11 organs",
        "multi-class",
        _ORGANS,
        1,
        (
            "9ab87b696fb54e2a387ebe992d6ed5f1",
            "53a6d115339d874c25e309a994ff46d3",
            "ded0c5fa01a95dc4978b956f613e9b8e",
            "b354719e553fbbb2513d5533f52a4cb1",
        ),
    ),
}

MEDMNIST_FLAGS = tuple(MEDMNIST_INFO)
MEDMNIST_SIZES = (28, 64, 128, 224)


def infer_flag(path: PathLike) -> str:
    """MedMNIST flag from a file name: ``dermamnist_64.npz`` gives ``dermamnist``.

    Known flags are matched as the longest prefix of the lower-cased stem
    (``pneumoniamnist_imbalanced`` gives ``pneumoniamnist``); otherwise the
    stem without a trailing ``_<size>`` is returned.
    """
    stem = Path(path).name.lower()
    stem = stem[:-4] if stem.endswith(".npz") else Path(stem).stem
    known = [f for f in MEDMNIST_FLAGS if stem == f or stem.startswith(f + "_")]
    if known:
        return max(known, key=len)
    return re.sub(r"_\d+$", "", stem)


def _descr(flag: str, info: dict | None, splits: dict[str, Bunch], task: str, names) -> str:
    title = f"MedMNIST {flag}" + ("" if info else " (not a known MedMNIST v2 flag)")
    lines = [title, "=" * len(title), ""]
    if info:
        lines.append(f"{info['about']}.")
    lines.append(f"task: {task}; {len(names)} labels")
    for name, b in splits.items():
        lines.append(f"{name}: {len(b.images)} images of {'x'.join(map(str, b.images.shape[1:]))}")
    if task != "multi-label, binary-class":
        lines += ["", "code  images(" + "/".join(splits) + ")  name"]
        for code, label in enumerate(names):
            counts = "/".join(str(int((b.target == code).sum())) for b in splits.values())
            lines.append(f"{code:>4}  {counts:<16} {label}")
    licence = info["licence"] if info else MEDMNIST_LICENCE
    lines += ["", f"Licence: {licence}. Homepage: {MEDMNIST_HOMEPAGE}"]
    lines.append(f"Cite: {MEDMNIST_CITATION} (and the source dataset's paper).")
    return "\n".join(lines)


def load_medmnist(path: PathLike, *, split: str | None = None, flag: str | None = None) -> Bunch:
    """Load a MedMNIST ``.npz`` file, keeping its official splits apart.

    The file holds ``train_images``, ``train_labels`` (shape (n, 1) or
    (n, L)), and the same for ``val`` and ``test``. Images are returned as
    (n, H, W, C) uint8, with C=1 added for grayscale sets (3D sets get a
    trailing channel axis too).

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file, e.g. ``retinamnist.npz`` or ``dermamnist_64.npz``.
    split : {"train", "val", "test"}, default=None
        Return this split only; None returns all splits present.
    flag : str, default=None
        The MedMNIST set (``"retinamnist"``, ...); inferred from the file name
        when None (``pneumoniamnist_imbalanced.npz`` gives ``pneumoniamnist``).
        Label names and the task type come from the 2D MedMNIST v2 table; an
        unknown flag gets numeric names ``"0", "1", ...``.

    Returns
    -------
    data : sklearn.utils.Bunch
        With ``split`` given: ``images``, ``target`` (shape (n,) int64 for
        single-label sets, (n, L) for multi-label), ``target_names``,
        ``task``, ``flag``, ``split`` and ``DESCR``. With ``split=None``:
        ``train``, ``val``, ``test`` (each a Bunch as above; a split absent
        from the file is left out), ``target_names``, ``task`` (one of
        ``"multi-class"``, ``"binary-class"``, ``"ordinal-regression"``,
        ``"multi-label, binary-class"``), ``flag`` and ``DESCR`` (licence
        CC BY 4.0 -- CC BY-NC 4.0 for DermaMNIST -- and the citation, Yang et
        al. 2023).

    Examples
    --------
    >>> from fewmed.datasets import load_medmnist
    >>> retina = load_medmnist("retinamnist.npz")  # doctest: +SKIP
    >>> retina.train.images.shape, retina.task  # doctest: +SKIP
    ((1080, 28, 28, 3), 'ordinal-regression')
    >>> test = load_medmnist("retinamnist.npz", split="test")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {path}")
    flag = (flag or infer_flag(path)).lower()
    info = MEDMNIST_INFO.get(flag)
    wanted = SPLITS if split is None else (split,)
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        for s in wanted:
            if f"{s}_images" in keys and f"{s}_labels" in keys:
                raw[s] = (data[f"{s}_images"], data[f"{s}_labels"])
    if not raw:
        need = ", ".join(f"{s}_images/{s}_labels" for s in wanted)
        raise ValueError(f"{path} is not a MedMNIST file: expected {need}; found {sorted(keys)}")
    multilabel = any(y.ndim == 2 and y.shape[1] > 1 for _, y in raw.values())
    if info is not None:
        names = np.asarray(info["labels"], dtype=str)
        task = info["task"]
    else:
        if multilabel:
            n_labels = max(y.shape[1] for _, y in raw.values())
        else:
            n_labels = int(max(int(y.max(initial=0)) for _, y in raw.values())) + 1
        names = np.asarray([str(i) for i in range(n_labels)], dtype=str)
        task = (
            "multi-label, binary-class"
            if multilabel
            else ("binary-class" if n_labels == 2 else "multi-class")
        )
    is_3d = flag.endswith("3d")
    splits: dict[str, Bunch] = {}
    for s, (x, y) in raw.items():
        x = np.asarray(x, dtype=np.uint8)
        if x.ndim == 3 or (is_3d and x.ndim == 4):
            x = x[..., None]
        y = np.asarray(y).astype(np.int64)
        if not multilabel:
            y = y.reshape(len(y))
        splits[s] = Bunch(images=x, target=y, target_names=names, task=task, flag=flag, split=s)
    descr = _descr(flag, info, splits, task, names)
    for b in splits.values():
        b.DESCR = descr
    if split is not None:
        return splits[split]
    return Bunch(**splits, target_names=names, task=task, flag=flag, DESCR=descr)
