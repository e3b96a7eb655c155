"""Training: one run or many, and probes on what they wrote.

Layer 5 of 7 (the run layer); imports the layers below; never prints or renders reports. What lives here: optim
(Adam with per-element step counts for freezes), hooks (the Intervener: a Plan's edits installed
on a model), donor (grafts from another run), train (the loop of one run), ensemble (many runs as
one batched model), runs (a recipe's seeds), pool and raybackend (one futures loop, local
processes or Ray), posthoc (probes on checkpoints), benches (a suite's runs), discover (every head's
roles, formation times, ablation effects and composition, from a run's checkpoints), isolation (the
suite of experiments that tests a discovery).
"""
