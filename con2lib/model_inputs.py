"""What the logged model takes as input: image files, base64 PNG/JPEG text, bytes or arrays; and an example of it."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from con2lib.data.images import Preprocess


def decode(image: Any) -> Any:
    """A ``image`` column value: base64 text (optionally a ``data:`` URL) -> bytes; anything else as is."""
    if image is None or (isinstance(image, float) and np.isnan(image)):
        raise ValueError("no image: the row's 'path' and 'image' are both empty")
    if isinstance(image, str):
        try:
            return base64.b64decode(image.split(",", 1)[1] if image.startswith("data:") else image, validate=True)
        except binascii.Error as err:
            raise ValueError(f"the 'image' value is not base64 text of an image file ({err})") from None
    return image


def input_images(model_input: Any) -> list[Any]:
    """The images of a pyfunc input, one item per image.

    Accepts a DataFrame with a ``path`` column (file paths) and/or an ``image`` column (base64 text of
    PNG/JPEG bytes, bytes, or arrays; used where ``path`` is empty); a numpy array or tensor holding a batch
    (N, C, H, W), (N, H, W, C) or (N, H, W), or one (H, W) image; or a list of any of these items.
    """
    if isinstance(model_input, pd.DataFrame):
        if not {"path", "image"} & set(model_input.columns):
            raise ValueError(f"expected a column 'path' (image files) or 'image' (base64 PNG/JPEG), got "
                             f"{list(model_input.columns)}")
        paths = model_input["path"] if "path" in model_input else pd.Series([None] * len(model_input))
        data = model_input["image"] if "image" in model_input else pd.Series([None] * len(model_input))
        return [Path(p) if isinstance(p, str) and p else d for p, d in zip(paths, data, strict=True)]
    if isinstance(model_input, torch.Tensor):
        model_input = model_input.cpu().numpy()
    if isinstance(model_input, np.ndarray):
        return [model_input] if model_input.ndim == 2 else list(model_input)
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise TypeError(f"cannot score a {type(model_input).__name__}; pass a DataFrame with a 'path' or 'image' "
                    "column, a numpy array of images, or a list of images")


def input_example(prep: Preprocess) -> pd.DataFrame:
    """A valid model input: one mid-grey image of the model's size and mode, as base64 PNG in column ``image``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(prep.mode, (prep.size, prep.size), 128 if prep.mode == "L" else (128, 128, 128)).save(buffer, "PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})
