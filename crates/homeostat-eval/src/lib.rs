//! Evaluation (being written).
