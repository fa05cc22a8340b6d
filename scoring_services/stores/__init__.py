"""Model stores a model uri can name besides paths and http(s): S3-compatible object storage (`s3.py`) and an
MLflow model registry (`models:/`, `mlflow_registry.py`). Each store reads its endpoint and credentials from the
Secret the model's `credentials.secretRef` names (`secrets.py`), never from the IR."""
