"""gradwatch service: training jobs, stored gradient histories and diagnoses over REST."""
