"""``prunetune serve``: the FastAPI app (its routers and API models) and the worker of submitted studies."""
