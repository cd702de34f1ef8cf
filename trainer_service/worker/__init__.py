"""The training worker: one process per job, started by a launcher, reporting through the job store."""
