DROP TABLE output_files;
DROP TABLE input_files;
DROP TABLE datums;
DROP TABLE jobs;
