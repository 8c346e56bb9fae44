"""What each data source is and under which licence it may be used: named in the manifest's training block, the
model card and docs/training.md. An image's source is recorded by trainer.data.dataset.scan."""

from __future__ import annotations

from typing import Any

import numpy as np

# source → (licence, citation). A source not listed here is recorded with empty licence and citation.
SOURCES: dict[str, tuple[str, str]] = {
    "brain-tumor-mri": (
        "as published by its authors (see the repository)",
        "S. Bhuvaji et al., Brain Tumor Classification (MRI), GitHub SartajBhuvaji/Brain-Tumor-Classification-DataSet "
        "(2020)",
    ),
    "figshare": (
        "CC BY 4.0",
        "J. Cheng et al., Enhanced performance of brain tumor classification via tumor region augmentation and "
        "partition, PLoS ONE 10(10) e0140747 (2015); figshare brain tumor dataset; via M. Nickparvar, Brain Tumor "
        "MRI Dataset (Kaggle, CC0)",
    ),
    "br35h": (
        "CC0 (as merged by M. Nickparvar)",
        "A. Hamada, Br35H :: Brain Tumor Detection 2020 (Kaggle); via M. Nickparvar, Brain Tumor MRI Dataset "
        "(Kaggle, CC0)",
    ),
    "IXI T1w": (
        "CC BY-SA 3.0",
        "IXI dataset, brain-development.org/ixi-dataset (T1-weighted, one mid-axial slice per subject, as exported "
        "by ci-ber/THOR_DDPM)",
    ),
    "TCGA-LGG": (
        "CC BY 3.0",
        "TCGA-LGG collection, The Cancer Imaging Archive (CC BY 3.0); 2-D slices and FLAIR-abnormality masks as "
        "published by M. Buda, A. Saha, M. Mazurowski, Association of genomic subtypes of lower-grade gliomas with "
        "shape features automatically extracted by a deep learning algorithm, Computers in Biology and Medicine 109 "
        "(2019), as copied in hua2980/brain-tumor-segmentation (kaggle_3m)",
    ),
    "br35h-yes": (
        "no terms stated (images collected from the web)",
        "A. Hamada, Br35H :: Brain Tumor Detection 2020 (Kaggle), the tumour ('yes') half, as copied in "
        "ss8319/Br35H-Brain-Tumor-Detection; tumour type not given (label: any tumour)",
    ),
}


def source_table(
    source: np.ndarray, paths: np.ndarray, y: np.ndarray, classes: list[str], first_root: str = ""
) -> list[dict[str, Any]]:
    """One row per source (in order of first appearance): its root, image count per class, licence and citation."""
    from trainer.data.dataset import ANY_TUMOUR, ANY_TUMOUR_NAME, EXTRA_ROOT_PREFIX

    rows = []
    for name in dict.fromkeys(source.tolist()):
        mask = source == name
        first = str(paths[np.argmax(mask)])
        root = first[len(EXTRA_ROOT_PREFIX) :].split("/", 1)[0] if first.startswith(EXTRA_ROOT_PREFIX) else first_root
        licence, citation = SOURCES.get(str(name), ("", ""))
        rows.append(
            {
                "name": str(name),
                "root": root,
                "images": int(mask.sum()),
                "per_class": {
                    c: int((mask & (y == k)).sum())
                    for k, c in [*enumerate(classes), (ANY_TUMOUR, ANY_TUMOUR_NAME)]
                    if (mask & (y == k)).any()
                },
                "licence": licence,
                "citation": citation,
            }
        )
    return rows
