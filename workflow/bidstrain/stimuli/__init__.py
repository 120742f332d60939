"""Naturalistic stimuli: index the films, sounds and transcripts each BOLD run presented,
compute their features per TR (one job per stimulus file) and align them with the runs."""
