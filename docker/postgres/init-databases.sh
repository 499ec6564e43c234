#!/bin/sh
# First start of the postgres service only (an empty data volume): one role and one database
# each for MLflow's backend store and for the Optuna storage, with the passwords from
# docker/.env. psql's :'name' quoting keeps any character of a password literal.
set -e
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in docker/.env}"
: "${OPTUNA_DB_PASSWORD:?set OPTUNA_DB_PASSWORD in docker/.env}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" -v optuna_password="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE DATABASE optuna OWNER optuna;
SQL
