"""Online learning in the service: per-user effects refitted over a window, per-video effects from order-free sums, and the replay of a log."""
