from .mssn_mitosis import MSSNMitosis

__all__ = ["MSSNMitosis"]
