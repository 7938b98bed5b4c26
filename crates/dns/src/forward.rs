//! Forwarding of names outside the cluster zone (being written).
