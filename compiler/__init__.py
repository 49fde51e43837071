"""Pure compilation: config -> typed specs -> DAG -> keys -> plan. Never imports torch."""
