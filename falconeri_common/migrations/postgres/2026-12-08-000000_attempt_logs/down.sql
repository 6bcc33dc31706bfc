DROP TABLE log_chunks;
