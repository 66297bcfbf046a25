-- Optuna's RDB storage lives beside MLflow's tables, in its own database.
CREATE DATABASE optuna OWNER zsclust;
