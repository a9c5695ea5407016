"""How the networks are served: the embedded ``tritonserver`` launcher, the Python-based ``onnxruntime`` backend,
the runtime repository builder, the glue graphs and their graph helper, the stand-ins, the model manifest and
store, and the typed gRPC client. May import ``swapstream.pipelines`` only; nothing here knows about jobs."""
