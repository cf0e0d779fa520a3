"""Pure model code shared by batch jobs and services: data loading, ALS, sharding,
FAISS index builds, ranking features and offline evaluation. No network or database."""
