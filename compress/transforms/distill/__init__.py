"""Distillation: recovery of a pruned student, step distillation (trajectory, consistency) and
guidance distillation, with the student training pieces they share."""
