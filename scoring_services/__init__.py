"""Scoring services: an Open Inference Protocol (KServe V2) model server with six runtimes and adaptive batching.

One scoring service serves the model(s) of a pipeline (one per service on Kubernetes, one per process locally).
The layers, from the wire inward:

- `app`: a raw ASGI application, thin routes that parse and delegate (no per-request framework objects);
- `dataplane`: the transport-neutral core (`DataPlane`): metadata, readiness, inference, the repository
  extension; tests call it directly;
- `codecs`: V2 JSON and binary tensors <-> numpy arrays, vectorised;
- `batching`: per-model adaptive batching, model calls off the event loop;
- `repository` + `artifacts`: model configs, URIs (path, file://, http(s)://), sha256 checks, load/unload;
- `runtimes`: one module per runtime behind one async base class;
- `metrics`, `settings`, `cli` (`modelops scoring-service`).
"""
