#!/bin/sh
# First start of an empty volume only (the postgres image runs /docker-entrypoint-initdb.d/* once): one role
# and one database each for MLflow and Optuna, so neither service nor any user holds the admin account.
# The passwords come from the container's environment (compose.yaml) and never appear on a command line.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv optuna_password OPTUNA_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE optuna OWNER optuna;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE optuna FROM PUBLIC;
SQL
