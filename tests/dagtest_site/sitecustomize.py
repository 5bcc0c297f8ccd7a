"""Imported at start-up only by the test suite's ``airflow dags test`` processes (``migrated_airflow_env``
puts this directory first on their ``PYTHONPATH``): skip the interpreter's last garbage collections.

After the DAG run has ended and the exit code is set, finalising such a process spends 3.5-4 s of CPU
in the garbage collector (``gc_collect_main``, seen with ``py-spy dump --native``) on the heap Airflow's
in-process execution API leaves. Freezing the heap as the last exit handler skips that walk; logging and
the other exit handlers have run by then, and the DB commits long before.
"""

import atexit
import gc

atexit.register(gc.freeze)  # registered first, so it runs after every other exit handler
