"""Everything that runs on Apache Spark: the session, the Spark engine and the Spark forms of each job's steps."""
