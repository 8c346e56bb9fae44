"""HTTP and operations: the routes, shared dependencies, middleware (body limit, deadline, admission), metrics,
the model card, the Open Inference Protocol codec and the model repository with its zero-downtime reload."""
