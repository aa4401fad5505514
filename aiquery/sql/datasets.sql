-- aiquery_dataset(name): the path of a sample data set's Parquet file (aiquery/_datasets.py), e.g.
-- read_parquet(aiquery_dataset('rotten_tomatoes')). A macro over the registration's own Python
-- function, which DuckDB may call while planning (it has no side effects), so it can name a file.
CREATE OR REPLACE TEMP MACRO aiquery_dataset(name) AS $DATASET_UDF(name);
