//! The one place that runs vmrun.
