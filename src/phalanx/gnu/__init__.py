"""`phalanx map`: GNU parallel's front end — its arguments, inputs, templates, job planning, run and output."""
