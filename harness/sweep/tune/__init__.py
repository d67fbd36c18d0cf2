"""Running a sweep on Ray Tune: the driver (start Ray, build the Tuner, progress, resume), the worker
(the trainable inside each trial), the Optuna searcher and the preflight on every node. The driver
never imports the worker's training code; both share only what a trial reports (protocol)."""
