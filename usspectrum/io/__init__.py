"""What goes in and out: checkpoints, data sets, result CSVs, exports, plots."""
