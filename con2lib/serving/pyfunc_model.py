"""A trained CON2 model as one MLflow pyfunc.

:func:`log_model` logs a :class:`~con2lib.serving.scoring_model.ScoringModel` as ``model`` of the
active MLflow run: the state as a ``weights_only`` checkpoint (no pickled code), the model as code
(:class:`Con2PyfuncModel`, from the copy of the whole ``con2lib`` package logged with it, so loading
needs no installed con2), pinned pip requirements, and a ``model_config`` with the score to decide on
(``nnd`` or ``lh``) and the device.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import con2lib
from con2lib.method.checkpoint import load_checkpoint, save_checkpoint
from con2lib.method.device import select_device
from con2lib.serving.model_inputs import input_example, input_images, json_safe
from con2lib.serving.scoring_model import SCORES, ScoringModel

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

PIP_PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "pandas", "pillow", "scikit-learn", "tqdm")
_SCRIPT = ("# MLflow model from code: the CON2 pyfunc, from the con2lib copy logged with the model\n"
           "from mlflow.models import set_model\n\nfrom con2lib.serving.pyfunc_model import Con2PyfuncModel\n\n"
           "set_model(Con2PyfuncModel())\n")


class Con2PyfuncModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: ``predict`` takes images (see :func:`input_images`) and returns :meth:`ScoringModel.predict`'s
    table. ``model_config``: ``score`` (``nnd`` or ``lh``) and ``device`` (``auto``, ``cpu``, ``cuda``, ``mps``)."""

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        self.score_name = config.get("score", "nnd")
        if self.score_name not in SCORES:
            raise ValueError(f"model_config score={self.score_name!r} is invalid: expected one of {', '.join(SCORES)}")
        state = load_checkpoint(context.artifacts["con2"])
        self.model = ScoringModel.from_state(state, select_device(config.get("device", "auto")))
        if self.model.thresholds.get(self.score_name) is None:  # said at load, not at the first request
            raise ValueError(f"this model has no threshold for score {self.score_name!r} "
                             f"({self.model.threshold_source}); use score 'nnd'")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """:meth:`ScoringModel.predict`'s table, missing values as None (``null`` in the server's JSON).

        Raises:
            MlflowException: an input the model does not take (a ``path`` column, no ``image`` column): the
                server answers 400 with this one line, without a traceback.
        """
        try:
            images = input_images(model_input)
        except (TypeError, ValueError) as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None
        return json_safe(self.model.predict(images, self.score_name))


def pip_requirements() -> list[str]:
    """The running environment's versions of what the model imports (local labels such as ``+cpu`` dropped)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in PIP_PACKAGES]


def log_model(model: ScoringModel, name: str = "model", score: str = "nnd") -> ModelInfo:
    """Logs ``model`` as the pyfunc ``name`` of the active MLflow run (``runs:/<run id>/model``).

    Args:
        score: the score ``anomaly`` decides on by default; ``model_config={"score": ...}`` at load overrides it.
    """
    if score not in SCORES:
        raise ValueError(f"score={score!r} is invalid: expected one of {', '.join(SCORES)}")
    example = input_example(model.prep)
    # outputs only: an input schema would make MLflow reject the arrays and lists predict() also takes
    output = model.predict(input_images(example), score)
    with warnings.catch_warnings():  # a hint that integer columns cannot hold NA: nearest_index never does
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column")
        signature = infer_signature(model_output=output.astype({"anomaly": bool}))  # no NA in the example
    with tempfile.TemporaryDirectory() as tmp:
        state = save_checkpoint(Path(tmp) / "con2_model.pt", model.state())
        script = Path(tmp) / "con2_pyfunc.py"
        script.write_text(_SCRIPT)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(script), artifacts={"con2": str(state)},
            code_paths=[str(Path(con2lib.__file__).resolve().parent)], pip_requirements=pip_requirements(),
            model_config={"score": score, "device": "auto"}, signature=signature, input_example=example,
        )
