"""One Airflow DAG per tokenmill config: the configs are listed in the environment variable
TOKENMILL_DAG_CONFIGS or the Airflow Variable `tokenmill_configs` (infra/airflow/README.md).
The DAGs are built by tokenmill_airflow.build_dag, from the configs alone."""

import os
import sys

# Airflow puts the DAGs folder on sys.path when it parses; a bare DagBag does not.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tokenmill_airflow import build_dag, configured_configs  # noqa: E402

for _config in configured_configs():
    _dag = build_dag(_config)
    globals()[_dag.dag_id] = _dag
