-- Run once by the postgres image on an empty data directory: the Feast registry's database.
CREATE DATABASE switchyard_feast OWNER switchyard;
