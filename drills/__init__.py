"""`make drills`: the platform's failure drills under steady load, measured from the client's
side (docs/drills.md)."""
