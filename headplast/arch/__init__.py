from headplast.arch.adapters import ArchAdapter, get_adapter, supported_model_types  # noqa: F401
