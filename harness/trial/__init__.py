"""One trial: its typed config, the trainer for one seed (single) and for packed seeds (packed), both
writing through one run folder (run_folder) after one set-up (setup) and one evaluation (evaluation)."""
