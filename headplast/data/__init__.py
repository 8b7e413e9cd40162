from headplast.data.tasks import TaskSpec, get_task, list_tasks  # noqa: F401
from headplast.data.loaders import Examples, load_split  # noqa: F401
