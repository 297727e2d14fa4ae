"""The tools room: the planner, local runs, plots and the field reference (no cluster needed)."""
