from equi_diffpo.common.robosuite_logs import drop_robosuite_import_warnings

drop_robosuite_import_warnings()   # before any module of this package imports robosuite
