"""Label review: the annotation store, CSV exchange, agreement, label-issue detection and the review queue."""
