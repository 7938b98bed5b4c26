//! The cluster zone (being written).
