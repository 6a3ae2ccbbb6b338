"""What the logged model takes as input (base64 PNG/JPEG text, bytes or arrays), an example of it, and its
output made valid JSON.

The model opens no files: served (``mlflow models serve``), a ``path`` would name a file of the server, and
any client could probe which files exist there, have them scored, or hang a worker on a FIFO. ``con2 score``
reads the local files itself and passes their bytes (:mod:`con2lib.serving.commands`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from typing import Any

import numpy as np
import pandas as pd
import torch

from con2lib.data.images import Preprocess

NO_PATHS = ("the model opens no files (served, a path would name a file of the server): send the image file's "
            "bytes, base64-encoded, in column 'image'; con2 score reads local files")


def decode(image: Any) -> Any:
    """A ``image`` column value: base64 text (optionally a ``data:`` URL) -> bytes; bytes and arrays as they are.

    Raises:
        ValueError: an empty value, text that is not base64, or a file path (:data:`NO_PATHS`).
    """
    if image is None or (isinstance(image, float) and np.isnan(image)):
        raise ValueError("no image: the row's 'image' is empty")
    if isinstance(image, os.PathLike):
        raise ValueError(f"a file path is not an image: {NO_PATHS}")
    if isinstance(image, str):
        try:
            return base64.b64decode(image.split(",", 1)[1] if image.startswith("data:") else image, validate=True)
        except binascii.Error as err:
            raise ValueError(f"the 'image' value is not base64 text of an image file ({err})") from None
    return image


def input_images(model_input: Any) -> list[Any]:
    """The images of a pyfunc input, one item per image.

    Accepts a DataFrame (or a dict of columns) with an ``image`` column (base64 text of PNG/JPEG bytes, bytes,
    or arrays); a numpy array or tensor holding a batch (N, C, H, W), (N, H, W, C) or (N, H, W), or one (H, W)
    image; or a list of any of these items.

    Raises:
        ValueError: a DataFrame without an ``image`` column, or with a ``path`` column (the model opens no
            files: :data:`NO_PATHS`); one line, shown to the client of a served model.
        TypeError: any other kind of input.
    """
    if isinstance(model_input, dict):  # the server's "instances": [{"image": ...}] arrive as {column: array}
        model_input = pd.DataFrame({k: np.atleast_1d(np.asarray(v, dtype=object)) for k, v in model_input.items()})
    if isinstance(model_input, pd.DataFrame):
        columns = [str(c)[:40] for c in model_input.columns[:10]]  # a client's column names: shown, but bounded
        if "path" in model_input.columns:
            raise ValueError(f"column 'path' is not accepted: {NO_PATHS}")
        if "image" not in model_input.columns:
            raise ValueError(f"expected a column 'image' (base64 text of a PNG or JPEG file), got columns {columns}")
        return list(model_input["image"])
    if isinstance(model_input, torch.Tensor):
        model_input = model_input.cpu().numpy()
    if isinstance(model_input, np.ndarray):
        return [model_input] if model_input.ndim == 2 else list(model_input)
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise TypeError(f"cannot score a {type(model_input).__name__}; pass a DataFrame with an 'image' column, a numpy "
                    "array of images, or a list of images")


def input_example(prep: Preprocess) -> pd.DataFrame:
    """A valid model input: one mid-grey image of the model's size and mode, as base64 PNG in column ``image``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(prep.mode, (prep.size, prep.size), 128 if prep.mode == "L" else (128, 128, 128)).save(buffer, "PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})


def json_safe(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every missing value (NaN scores, NA ``anomaly`` of an error row) as None.

    MLflow's scoring server writes predictions with ``json.dump``, which turns NaN into the bare token ``NaN``
    (not JSON: JavaScript's ``JSON.parse``, Go and strict Python parsers reject the whole batch) and fails on
    pandas' NA; None becomes ``null``. Object columns keep None (a float column would turn it back into NaN).
    """
    return table.astype(object).where(table.notna(), None)


def error_text(err: BaseException) -> str:
    """One line for an error row, without object addresses (``<_io.BytesIO object at 0x7f...>``): a served
    model's client reads it, and an address tells it nothing but the server's memory layout."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", " ".join(str(err).split()))
    return f"{type(err).__name__}: {text}"
