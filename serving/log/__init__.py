"""The store's log as a replica uses it: following it (``follower``), snapshots of what it
built (``snapshot``) and the archive of its old impressions (``archive``)."""
