"""What the app's views read and compute, kept out of Streamlit so notebooks and tests use it too.

``layout`` (what a folder holds and what is missing), ``summary`` (one line per trace run), ``readout``
(per-token activations from the store or a teacher-forced pass), ``neuron_stats`` (trajectories, top
contexts, logit effects), ``marks`` (failure labels and intervention events as token spans), ``scores``
(detector and exit-signal scores per token), ``tokens`` (tokens as coloured HTML), ``live`` (one problem
with a method on a loaded model).
"""
