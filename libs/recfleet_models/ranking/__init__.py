"""The ranking stage as pure code, shared by the ranking service, the `train-ranker` job
and offline evaluation: candidates and the user (`features`), the learned model's feature
matrix (`learned`), the rule formula (`rules`), business filters (`filters`), diversity,
the cold-start quota and exploration (`diversity`, `cold_start`), the ranker artifact
format (`artifacts`) and the one ranker trainer (`training`). No network or database
here; I/O goes through the interfaces of `recfleet_store`."""
