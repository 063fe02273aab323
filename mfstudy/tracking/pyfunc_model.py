"""Models-from-code entry point of the logged recommender.

MLflow runs this file (it is never imported by mfstudy) when a model is logged or loaded, so
no Python object is pickled into the model: only numpy arrays, JSON and CSV files travel.
"""

from mlflow.models import set_model

from mfstudy.tracking._model import RecommenderPyfunc

set_model(RecommenderPyfunc())
