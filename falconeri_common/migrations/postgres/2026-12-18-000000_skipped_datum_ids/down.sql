DROP TABLE skipped_datum_ids;
