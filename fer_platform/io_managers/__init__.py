from fer_platform.io_managers.parquet import LakeIOManager

__all__ = ["LakeIOManager"]
